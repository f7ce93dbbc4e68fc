//! The `vitals` command-line tool. Filled in by a later change.

fn main() {
    println!("vitals: the command-line tool is not built yet; see README.md");
}
