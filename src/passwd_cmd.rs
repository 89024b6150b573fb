//! `gatemq passwd`: create and edit password files like `mosquitto_passwd`.
//!
//! ```text
//! gatemq passwd [-c | -D] FILE USER         (asks for the password twice)
//! gatemq passwd [-c] -b FILE USER PASSWORD
//! gatemq passwd -U FILE                     (hash a plain-text user:password file)
//! ```

use gatemq::auth::password::{valid_username, PasswordFile};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "\
Usage: gatemq passwd [-c | -D] FILE USER
       gatemq passwd [-c] -b FILE USER PASSWORD
       gatemq passwd -U FILE
 -c : create a new password file (overwrites an existing one)
 -b : batch mode: the password is the last argument
 -D : delete USER
 -U : hash the passwords of a plain-text user:password file in place
Files are Mosquitto's format (PBKDF2-SHA512, $7$): mosquitto_passwd and Mosquitto read them.";

pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatemq passwd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (mut create, mut batch, mut delete, mut update) = (false, false, false, false);
    let mut rest = Vec::new();
    for a in args {
        match a.as_str() {
            "-c" => create = true,
            "-b" => batch = true,
            "-D" => delete = true,
            "-U" => update = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown option {s}\n{USAGE}"))
            }
            s => rest.push(s),
        }
    }
    if [
        create && delete,
        create && update,
        delete && update,
        update && batch,
    ]
    .iter()
    .any(|x| *x)
    {
        return Err(format!("these options cannot be combined\n{USAGE}"));
    }
    if update {
        let [file] = rest[..] else {
            return Err(USAGE.to_string());
        };
        return hash_plain_file(Path::new(file));
    }
    let (file, user, password) = match (batch, &rest[..]) {
        (true, [f, u, p]) => (*f, *u, Some(p.to_string())),
        (false, [f, u]) => (*f, *u, None),
        _ => return Err(USAGE.to_string()),
    };
    if !valid_username(user) {
        return Err(format!("invalid username '{user}' (not empty, no ':')"));
    }
    let path = Path::new(file);
    let mut pw = if create {
        PasswordFile::default()
    } else {
        PasswordFile::load(path)?
    };
    if delete {
        if !pw.delete(user) {
            return Err(format!("user {user} not found in {file}"));
        }
    } else {
        let password = match password {
            Some(p) => p,
            None => ask_password()?,
        };
        pw.set(user, &password)?;
    }
    write_atomically(path, &pw.to_text(), create)
}

/// Read the password twice from the terminal without echo (or once per line from a pipe).
fn ask_password() -> Result<String, String> {
    use std::io::IsTerminal;
    let tty = std::io::stdin().is_terminal();
    let stty = |arg: &str| {
        let _ = std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    let read = |prompt: &str| -> Result<String, String> {
        if tty {
            eprint!("{prompt}");
            let _ = std::io::stderr().flush();
            stty("-echo");
        }
        let mut line = String::new();
        let r = std::io::stdin().lock().read_line(&mut line);
        if tty {
            stty("echo");
            eprintln!();
        }
        r.map_err(|e| format!("cannot read the password: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    let first = read("Password: ")?;
    let second = read("Reenter password: ")?;
    if first != second {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

/// `-U`: hash every plain-text entry of a `user:password` file (hashed ones are kept as they
/// are, after checking they parse).
fn hash_plain_file(path: &Path) -> Result<(), String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {name}: {}", gatemq::config::io_reason(&e)))?;
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, secret) = line
            .split_once(':')
            .ok_or_else(|| format!("{name}:{}: expected user:password", n + 1))?;
        if secret.starts_with("$6$") || secret.starts_with("$7$") {
            PasswordFile::parse(line, &name)?;
            out.push_str(line);
            out.push('\n');
        } else {
            let mut one = PasswordFile::default();
            one.set(user, secret)
                .map_err(|e| format!("{name}:{}: {e}", n + 1))?;
            out.push_str(&one.to_text());
        }
    }
    write_atomically(path, &out, false)
}

/// Write through a temporary file and rename, keeping the old file's permissions (a new file
/// is readable by its owner only).
fn write_atomically(path: &Path, text: &str, create: bool) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp-gatemq-passwd");
    let mode = match std::fs::metadata(path) {
        Ok(m) if !create => m.permissions().mode() & 0o7777,
        _ => 0o600,
    };
    let err = |e: std::io::Error| {
        format!(
            "cannot write {}: {}",
            path.display(),
            gatemq::config::io_reason(&e)
        )
    };
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
