pub async fn run(_jobs: usize) -> Result<(), String> {
    Ok(())
}
