fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    for a in std::env::args().skip(1) {
        let Ok(b) = std::fs::read(&a) else { continue };
        let t = std::time::Instant::now();
        let mut r = None;
        for _ in 0..n {
            r = Some(ragpipe_ingest::extract(&b, &ragpipe_ingest::Limits::default()));
        }
        let el = t.elapsed() / n as u32;
        match r {
            Some(Ok(d)) if n == 1 => println!("== {a}\n{}\nwarnings: {:?}", d.text, d.warnings),
            Some(Ok(_)) => println!("== {a}: {el:?}"),
            Some(Err(e)) => println!("== {a}: error {e}"),
            None => {}
        }
    }
}
