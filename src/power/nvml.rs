//! Discrete NVIDIA GPUs through NVML, the driver's management library, loaded at run time
//! (`dlopen` of `libnvidia-ml.so.1`) so that edge-run neither links against it nor needs it
//! installed. Every GPU is summed: `nvmlDeviceGetTotalEnergyConsumption` (mJ since the driver
//! loaded; Volta and later) where every GPU has it, else `nvmlDeviceGetPowerUsage` (mW, which
//! recent GPUs average over about a second).
//!
//! Jetson's integrated GPU has no NVML power: JetPack's NVML reports nothing there (or is
//! absent); its INA3221 (`ina3221`) measures the module instead.
//!
//! A statically linked build (the aarch64 release) has no dynamic loader to load a library
//! with, so there NVML is not built and says so.

#[cfg(not(target_feature = "crt-static"))]
pub use loaded::open;

#[cfg(target_feature = "crt-static")]
pub fn open(_host: &super::host::Host) -> anyhow::Result<Box<dyn super::Sensor>> {
    anyhow::bail!("not built into this statically linked binary (loading libnvidia-ml needs the dynamic loader; on Jetson NVML reports no power anyway: use ina3221)")
}

#[cfg(not(target_feature = "crt-static"))]
mod loaded {
    use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr, CString};

    use anyhow::{anyhow, bail, Result};

    use super::super::host::Host;
    use super::super::{Reading, Sensor};

    type Ret = c_int;
    type Device = *mut c_void;
    const SUCCESS: Ret = 0;
    /// `NVML_DEVICE_NAME_V2_BUFFER_SIZE`.
    const NAME_BYTES: usize = 96;

    /// The functions used, resolved from the library before NVML is initialised.
    struct Functions {
        init: unsafe extern "C" fn() -> Ret,
        shutdown: unsafe extern "C" fn() -> Ret,
        error_string: unsafe extern "C" fn(Ret) -> *const c_char,
        count: unsafe extern "C" fn(*mut c_uint) -> Ret,
        handle: unsafe extern "C" fn(c_uint, *mut Device) -> Ret,
        name: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Ret,
        total_energy: unsafe extern "C" fn(Device, *mut c_ulonglong) -> Ret,
        power_usage: unsafe extern "C" fn(Device, *mut c_uint) -> Ret,
    }

    impl Functions {
        /// # Safety
        /// `library` is a live handle from dlopen.
        unsafe fn resolve(library: *mut c_void) -> Result<Functions> {
            // SAFETY: each type is the function's in nvml.h.
            unsafe {
                Ok(Functions {
                    init: symbol(library, c"nvmlInit_v2")?,
                    shutdown: symbol(library, c"nvmlShutdown")?,
                    error_string: symbol(library, c"nvmlErrorString")?,
                    count: symbol(library, c"nvmlDeviceGetCount_v2")?,
                    handle: symbol(library, c"nvmlDeviceGetHandleByIndex_v2")?,
                    name: symbol(library, c"nvmlDeviceGetName")?,
                    total_energy: symbol(library, c"nvmlDeviceGetTotalEnergyConsumption")?,
                    power_usage: symbol(library, c"nvmlDeviceGetPowerUsage")?,
                })
            }
        }

        fn error(&self, ret: Ret) -> String {
            // SAFETY: nvmlErrorString takes any return code and gives a static NUL-terminated
            // string (or null, handled).
            let s = unsafe { (self.error_string)(ret) };
            if s.is_null() {
                format!("NVML error {ret}")
            } else {
                // SAFETY: non-null, NUL-terminated, static in the library (loaded while self is).
                unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
            }
        }
    }

    /// NVML, initialised: Drop shuts it down and closes the library.
    struct Api {
        library: *mut c_void,
        f: Functions,
    }

    impl Drop for Api {
        fn drop(&mut self) {
            // SAFETY: an Api exists only after nvmlInit succeeded; no NVML function is called
            // after shutdown, and the library is closed last.
            unsafe {
                (self.f.shutdown)();
                libc::dlclose(self.library);
            }
        }
    }

    /// How the GPUs are read.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Energy,
        Power,
    }

    pub struct Nvml {
        api: Api,
        devices: Vec<Device>,
        names: Vec<String>,
        mode: Mode,
    }

    // SAFETY: NVML's functions are thread-safe (its documentation: "all NVML functions are
    // thread-safe"), and device handles are opaque tokens valid until nvmlShutdown, which only
    // Drop calls; the sensor is used from one thread at a time (behind the meter's lock).
    unsafe impl Send for Nvml {}

    /// The last `dlerror`, for messages.
    fn dl_error() -> String {
        // SAFETY: dlerror returns null or a NUL-terminated message valid until the next dl call
        // on this thread; it is copied at once.
        let e = unsafe { libc::dlerror() };
        if e.is_null() {
            "unknown error".into()
        } else {
            // SAFETY: as above.
            unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
        }
    }

    /// A function of `library`, as the function pointer type `F`.
    ///
    /// # Safety
    /// `F` must be an `extern "C"` function pointer type matching the symbol's C declaration.
    unsafe fn symbol<F: Copy>(library: *mut c_void, name: &CStr) -> Result<F> {
        const { assert!(size_of::<F>() == size_of::<*mut c_void>()) };
        // SAFETY: library is a live handle from dlopen; name is NUL-terminated.
        let p = unsafe { libc::dlsym(library, name.as_ptr()) };
        if p.is_null() {
            bail!("libnvidia-ml has no {} (a driver too old for it)", name.to_string_lossy());
        }
        // SAFETY: the caller guarantees F is the symbol's function pointer type; sizes match.
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }

    pub fn open(host: &Host) -> Result<Box<dyn Sensor>> {
        let Some(lib) = &host.nvml else { bail!("not loaded: EDGE_RUN_SYSFS_ROOT reads a fixture tree, and NVML asks the driver, not sysfs") };
        let cname = CString::new(lib.as_str()).map_err(|_| anyhow!("library name {lib:?} holds a NUL"))?;
        // SAFETY: dlopen with a NUL-terminated name; the library's initialisers are the driver's.
        let library = unsafe { libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if library.is_null() {
            bail!("cannot load {lib} ({}): no NVIDIA driver; NVML is for discrete NVIDIA GPUs (on Jetson it reports no power: use ina3221)", dl_error());
        }
        // SAFETY: library is the live handle just opened.
        let f = match unsafe { Functions::resolve(library) } {
            Ok(f) => f,
            Err(e) => {
                // SAFETY: nothing from the library is kept.
                unsafe { libc::dlclose(library) };
                return Err(e);
            }
        };
        // SAFETY: nvmlInit_v2 takes no arguments; a failure leaves nothing to shut down.
        let ret = unsafe { (f.init)() };
        if ret != SUCCESS {
            let why = f.error(ret);
            // SAFETY: the message is copied; nothing from the library is kept.
            unsafe { libc::dlclose(library) };
            bail!("nvmlInit failed: {why} (is the NVIDIA driver loaded? on Jetson NVML reports no power: use ina3221)");
        }
        let api = Api { library, f };
        let mut count: c_uint = 0;
        // SAFETY: writes one c_uint.
        let ret = unsafe { (api.f.count)(&mut count) };
        if ret != SUCCESS {
            bail!("nvmlDeviceGetCount: {}", api.f.error(ret));
        }
        if count == 0 {
            bail!("NVML sees no GPU");
        }
        let mut devices = Vec::new();
        let mut names = Vec::new();
        for i in 0..count {
            let mut d: Device = std::ptr::null_mut();
            // SAFETY: writes one handle for an index below the count.
            let ret = unsafe { (api.f.handle)(i, &mut d) };
            if ret != SUCCESS {
                bail!("nvmlDeviceGetHandleByIndex({i}): {}", api.f.error(ret));
            }
            let mut buf = [0 as c_char; NAME_BYTES];
            // SAFETY: writes at most NAME_BYTES bytes, NUL-terminated on success.
            let ok = unsafe { (api.f.name)(d, buf.as_mut_ptr(), NAME_BYTES as c_uint) } == SUCCESS;
            // SAFETY: buf is NUL-terminated on success (the last byte is still 0 regardless).
            names.push(if ok { unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned() } else { format!("GPU {i}") });
            devices.push(d);
        }
        let mut sensor = Nvml { api, devices, names, mode: Mode::Energy };
        if sensor.read().is_err() {
            sensor.mode = Mode::Power;
            sensor.read().map_err(|e| anyhow!("{e} (on Jetson NVML reports no power: use ina3221)"))?;
        }
        Ok(Box::new(sensor))
    }

    impl Sensor for Nvml {
        fn name(&self) -> String {
            let what = if self.mode == Mode::Energy { "energy" } else { "power" };
            format!("NVML {} ({what})", self.names.join(" + "))
        }

        fn read(&mut self) -> Result<Reading> {
            match self.mode {
                Mode::Energy => {
                    let mut millijoules = 0u128;
                    for (d, name) in self.devices.iter().zip(&self.names) {
                        let mut mj: c_ulonglong = 0;
                        // SAFETY: a live handle; writes one c_ulonglong.
                        let ret = unsafe { (self.api.f.total_energy)(*d, &mut mj) };
                        if ret != SUCCESS {
                            bail!("nvmlDeviceGetTotalEnergyConsumption ({name}): {}", self.api.f.error(ret));
                        }
                        millijoules += u128::from(mj);
                    }
                    Ok(Reading::Joules(millijoules as f64 * 1e-3))
                }
                Mode::Power => {
                    let mut milliwatts = 0u64;
                    for (d, name) in self.devices.iter().zip(&self.names) {
                        let mut mw: c_uint = 0;
                        // SAFETY: a live handle; writes one c_uint.
                        let ret = unsafe { (self.api.f.power_usage)(*d, &mut mw) };
                        if ret != SUCCESS {
                            bail!("nvmlDeviceGetPowerUsage ({name}): {}", self.api.f.error(ret));
                        }
                        milliwatts += u64::from(mw);
                    }
                    Ok(Reading::Watts(milliwatts as f64 * 1e-3))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::Host;
    use super::super::Reading;
    use super::*;

    #[test]
    fn a_missing_library_is_named() {
        let host = Host { nvml: Some("libnvidia-ml-not-here.so.1".into()), ..Host::default() };
        let e = open(&host).err().unwrap().to_string();
        if cfg!(target_feature = "crt-static") {
            assert!(e.contains("not built"), "{e}");
        } else {
            assert!(e.contains("cannot load libnvidia-ml-not-here.so.1") && e.contains("ina3221"), "{e}");
        }
        let e = open(&Host::fixture(std::path::Path::new("/nonexistent"))).err().unwrap().to_string();
        assert!(e.contains("EDGE_RUN_SYSFS_ROOT") || e.contains("not built"), "{e}");
    }

    /// The machine's own GPUs, where it has an NVIDIA driver; run with `--ignored` there.
    #[test]
    #[ignore = "needs an NVIDIA GPU and driver (libnvidia-ml.so.1; absent on the development VM)"]
    fn real_nvml_reads() {
        let mut s = open(&Host::from_env()).unwrap_or_else(|e| panic!("NO NVML HERE: {e:#}"));
        let a = s.read().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let b = s.read().unwrap();
        eprintln!("{}: {a:?} then {b:?}", s.name());
        match (a, b) {
            (Reading::Joules(a), Reading::Joules(b)) => assert!(b > a, "the energy counter did not move"),
            (Reading::Watts(_), Reading::Watts(w)) => assert!(w > 0.0),
            _ => panic!("the reading changed kind"),
        }
    }
}
