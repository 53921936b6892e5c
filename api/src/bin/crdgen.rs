//! Prints the `ImageSync` CustomResourceDefinition as YAML (the source of `crds/`).

fn main() -> anyhow::Result<()> {
    print!("{}", imagesync_api::crd_yaml()?);
    Ok(())
}
