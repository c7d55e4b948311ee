fn main() {
    println!("fewshot");
}
