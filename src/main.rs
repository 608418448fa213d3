fn main() {
    eprintln!("edge-run: being written");
    std::process::exit(2);
}
