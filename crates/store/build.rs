// Rebuild when a migration is added or changed: `sqlx::migrate!` embeds the directory's files,
// and without this cargo would not know a new file there is an input of this crate.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
