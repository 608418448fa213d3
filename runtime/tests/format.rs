//! Checkpoint format: round trip, and robustness against truncated, corrupt and hostile files.

mod support;
use support::rand_f32;
use edge_runtime::blocks::{pack_nested8_planes, GroupParams};
use edge_runtime::format::{Checkpoint, CheckpointWriter, Encoding, MetaValue, TensorData};
use edge_runtime::Error;
use half::f16;


fn sample_writer() -> CheckpointWriter {
    let mut w = CheckpointWriter::new();
    w.set_meta("general.architecture", MetaValue::Str("llama"));
    w.set_meta("answer", MetaValue::U64(42));
    w.set_meta("neg", MetaValue::I64(-7));
    w.set_meta("eps", MetaValue::F32(1e-5));
    w.set_meta("theta", MetaValue::F64(1e4));
    w.set_meta("flag", MetaValue::Bool(true));
    w.set_meta("blob", MetaValue::Bytes(&[1, 2, 3]));
    let v = rand_f32(3 * 16, 1);
    w.add_tensor(TensorData {
        name: "dense.f32".into(),
        encoding: Encoding::F32,
        shape: vec![3, 16],
        group_size: 0,
        segments: vec![bytemuck::cast_slice(&v).to_vec()],
    })
    .unwrap();
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    w.add_tensor(TensorData {
        name: "dense.f16".into(),
        encoding: Encoding::F16,
        shape: vec![3, 16],
        group_size: 0,
        segments: vec![bytemuck::cast_slice(&h).to_vec()],
    })
    .unwrap();
    let codes: Vec<u8> = (0..4 * 32).map(|i| (i * 7 % 256) as u8).collect();
    let params = vec![GroupParams { scale: f16::from_f32(0.01), min: f16::from_f32(-1.0) }; 4 * 32 / 16];
    let mut segs = vec![bytemuck::cast_slice(&params).to_vec()];
    segs.extend(pack_nested8_planes(&codes));
    w.add_tensor(TensorData { name: "nested".into(), encoding: Encoding::Nested8, shape: vec![4, 32], group_size: 16, segments: segs })
        .unwrap();
    w
}

fn sample_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    sample_writer().write_to(&mut out, |_, _| {}).unwrap();
    out
}

/// Parse from a 64-byte aligned copy, as the loaders provide.
fn parse_aligned<R>(bytes: &[u8], f: impl FnOnce(Result<Checkpoint<'_>, Error>) -> R) -> R {
    let mut buf = vec![0u128; bytes.len().div_ceil(16) + 4];
    let base: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
    let shift = base.as_ptr().align_offset(64);
    let region = &mut base[shift..shift + bytes.len()];
    region.copy_from_slice(bytes);
    f(Checkpoint::parse(region).and_then(|c| c.verify().map(|_| c)))
}

#[test]
fn round_trip_preserves_metadata_and_tensors() {
    let bytes = sample_bytes();
    parse_aligned(&bytes, |ck| {
        let ck = ck.unwrap();
        assert_eq!(ck.get_str("general.architecture"), Some("llama"));
        assert_eq!(ck.get_u64("answer"), Some(42));
        assert_eq!(ck.get("neg"), Some(MetaValue::I64(-7)));
        assert_eq!(ck.get_f32("eps"), Some(1e-5));
        assert_eq!(ck.get("theta"), Some(MetaValue::F64(1e4)));
        assert_eq!(ck.get_bool("flag"), Some(true));
        assert_eq!(ck.get_bytes("blob"), Some(&[1u8, 2, 3][..]));
        assert_eq!(ck.tensors.len(), 3);
        let t = ck.tensor("dense.f32").unwrap();
        assert_eq!(t.shape, vec![3, 16]);
        let v: &[f32] = bytemuck::cast_slice(t.segments[0].bytes);
        assert_eq!(v, rand_f32(48, 1).as_slice());
        let n = ck.tensor("nested").unwrap();
        assert_eq!(n.segments.len(), 7);
        assert_eq!(n.planes().map(|p| p.bytes.len()).collect::<Vec<_>>(), vec![32, 16, 16, 16, 16, 32]);
        for s in &n.segments {
            assert_eq!(s.file_offset % 64, 0, "segments are 64-byte aligned");
        }
    });
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_bytes();
    for len in 0..bytes.len() {
        parse_aligned(&bytes[..len], |r| match r {
            Err(Error::Truncated { .. }) | Err(Error::BadMagic { .. }) => {}
            other => panic!("truncated to {len} bytes: expected Truncated, got {other:?}"),
        });
    }
}

#[test]
fn every_single_byte_flip_is_detected() {
    let bytes = sample_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x41;
        // Padding bytes between segments carry no data: a flip there is harmless.
        let ok = parse_aligned(&b, |r| r.is_ok());
        if ok {
            let unchanged = parse_aligned(&bytes, |c| {
                let c = c.unwrap();
                !c.tensors.iter().flat_map(|t| &t.segments).any(|s| {
                    (s.file_offset as usize..s.file_offset as usize + s.bytes.len()).contains(&i)
                })
            });
            assert!(unchanged && i >= 128, "flip at byte {i} went undetected");
        }
    }
}

#[test]
fn wrong_magic_and_version_are_named() {
    let bytes = sample_bytes();
    let mut b = bytes.clone();
    b[..8].copy_from_slice(b"GGUF\x03\0\0\0");
    parse_aligned(&b, |r| assert!(matches!(r, Err(Error::BadMagic { .. }))));
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    parse_aligned(&b, |r| {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::UnsupportedVersion { found: 99, .. }));
        assert!(e.to_string().contains("version 99"), "{e}");
    });
}

/// A hostile file: a valid header whose sections claim huge counts must fail fast without
/// allocating what the counts say.
#[test]
fn hostile_counts_do_not_allocate() {
    let bytes = sample_bytes();
    // n_tensors at offset 56, n_meta at 60: set both huge and re-seal the header checksum.
    let mut b = bytes.clone();
    b[56..60].copy_from_slice(&u32::MAX.to_le_bytes());
    b[60..64].copy_from_slice(&u32::MAX.to_le_bytes());
    let sum = edge_runtime::format::checksum(&b[..120]);
    b[120..128].copy_from_slice(&sum.to_le_bytes());
    parse_aligned(&b, |r| assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}"));
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let mut w = CheckpointWriter::new();
    let bad_len = TensorData { name: "x".into(), encoding: Encoding::F32, shape: vec![4], group_size: 0, segments: vec![vec![0; 15]] };
    assert!(w.add_tensor(bad_len).is_err());
    let bad_group =
        TensorData { name: "y".into(), encoding: Encoding::Nested8, shape: vec![2, 20], group_size: 16, segments: vec![] };
    assert!(w.add_tensor(bad_group).is_err());
}

#[test]
fn atomic_write_refuses_overwrite_and_leaves_no_temp() {
    let dir = std::env::temp_dir().join(format!("edge-fmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.edge");
    let w = sample_writer();
    w.write_file(&path, false, |_, _| {}).unwrap();
    let first = std::fs::read(&path).unwrap();
    let err = w.write_file(&path, false, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    w.write_file(&path, true, |_, _| {}).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the checkpoint remains: {leftovers:?}");
    // mmap and read-into-memory loaders see the same bytes.
    let a = edge_runtime::load::CheckpointBytes::map(&path).unwrap();
    let b = edge_runtime::load::CheckpointBytes::read(&path).unwrap();
    assert_eq!(a.as_bytes(), b.as_bytes());
    std::fs::remove_dir_all(&dir).unwrap();
}
