//! Prints a CustomResourceDefinition as YAML (the source of `crds/`): the `ImageSync`
//! CRD without an argument, or the one whose `crds/` file name (or plural) is given, e.g.
//! `crdgen imagesyncsets`.

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let wanted = std::env::args().nth(1);
    let Some(wanted) = wanted else {
        print!("{}", imagesync_api::crd_yaml()?);
        return Ok(());
    };
    for (file, yaml) in imagesync_api::all_crds()? {
        let plural = file.split('.').next().unwrap_or_default();
        if file == wanted || plural == wanted {
            print!("{yaml}");
            return Ok(());
        }
    }
    bail!("no CRD named {wanted:?} (imagesyncs or imagesyncsets)")
}
