//! Man pages and shell completions from a binary's clap CLI, for packages (`rpm/discomy.spec`
//! runs each binary's hidden `generate-docs --out DIR`). Writes `DIR/man1/NAME*.1` (one page per
//! visible subcommand, as `clap_mangen` names them) and `DIR/completions/` for bash
//! (`NAME`), zsh (`_NAME`) and fish (`NAME.fish`).

use std::io;
use std::path::Path;

use clap_complete::Shell;

/// The name of the hidden subcommand every binary with a clap CLI answers.
pub const SUBCOMMAND: &str = "generate-docs";

/// Writes the man pages and completions of `cmd` under `out`, creating the directories.
pub fn generate(cmd: clap::Command, out: &Path) -> io::Result<()> {
    let man = out.join("man1");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let name = cmd.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        let file = clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
        // clap_complete names bash's file NAME.bash; bash-completion looks up plain NAME.
        if shell == Shell::Bash {
            std::fs::rename(&file, completions.join(&name))?;
        }
    }
    Ok(())
}

/// The hidden subcommand's arguments: `generate-docs --out DIR`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to write `man1/` and `completions/` into.
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
}
