//! Saved secrets: `<home>/credentials.json`, readable by its owner only.
//!
//! The file holds each user's secret and the user last registered or
//! logged in, who is the default when `--user` is not given:
//!
//! ```json
//! { "default_user": "alice", "users": { "alice": { "secret": "…" } } }
//! ```
//!
//! Writes go to a temporary file created with mode 0600 that then replaces
//! the old one, so a crash never leaves half a file and the secret is never
//! readable by others, not even for a moment.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{describe_error, Failure};

/// The file name inside the home directory.
pub const FILE_NAME: &str = "credentials.json";

/// The content of `credentials.json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The user last registered or logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    /// Secrets by username.
    #[serde(default)]
    pub users: BTreeMap<String, SavedUser>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedUser {
    pub secret: String,
}

/// The default home: `$XDG_CONFIG_HOME/chat-apps`, else
/// `$HOME/.config/chat-apps`.
pub fn default_home() -> Option<PathBuf> {
    let non_empty = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    non_empty("XDG_CONFIG_HOME")
        .map(|dir| dir.join("chat-apps"))
        .or_else(|| non_empty("HOME").map(|home| home.join(".config").join("chat-apps")))
}

/// The credentials file of one home directory.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    dir: PathBuf,
    path: PathBuf,
}

impl CredentialStore {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        let dir = home.into();
        let path = dir.join(FILE_NAME);
        Self { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved credentials; none yet is an empty set.
    pub fn load(&self) -> Result<Credentials, Failure> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Credentials::default()),
            Err(e) => return Err(self.failure("cannot read", &e)),
        };
        serde_json::from_str(&text).map_err(|e| self.failure("cannot parse", &e))
    }

    /// Replaces the file with `credentials`.
    pub fn save(&self, credentials: &Credentials) -> Result<(), Failure> {
        let mut text = serde_json::to_string_pretty(credentials)
            .map_err(|e| self.failure("cannot encode", &e))?;
        text.push('\n');
        self.write_atomically(text.as_bytes())
            .map_err(|e| self.failure("cannot write", &e))
    }

    /// Fails unless the file can be written: checked before registering, as
    /// a secret that cannot be saved is lost.
    pub fn check_writable(&self) -> Result<(), Failure> {
        self.create_dir()
            .map_err(|e| self.failure("cannot create the directory of", &e))?;
        let probe = self.temp_path();
        let written = private_file(&probe).map(drop);
        let _ = fs::remove_file(&probe);
        written.map_err(|e| self.failure("cannot write", &e))
    }

    /// Saves `secret` for `username` and makes it the default user.
    pub fn remember(&self, username: &str, secret: &str) -> Result<(), Failure> {
        let mut credentials = self.load()?;
        credentials.users.insert(
            username.to_owned(),
            SavedUser {
                secret: secret.to_owned(),
            },
        );
        credentials.default_user = Some(username.to_owned());
        self.save(&credentials)
    }

    /// The user to act as and its secret: `user` if given, else the default
    /// user. Fails with exit code 3 when there is no such saved user.
    pub fn select(&self, user: Option<&str>) -> Result<(String, String), Failure> {
        let credentials = self.load()?;
        let Some(username) = user.map(str::to_owned).or(credentials.default_user.clone()) else {
            return Err(Failure::auth(format!(
                "no saved credentials in {}: run `chat-client register <username>`, or \
                 `chat-client login <username>` with the secret on stdin",
                self.path.display()
            )));
        };
        match credentials.users.get(&username) {
            Some(saved) => Ok((username, saved.secret.clone())),
            None => Err(Failure::auth(format!(
                "no saved credentials for {username} in {}: run `chat-client register \
                 {username}`, or `chat-client login {username}` with the secret on stdin",
                self.path.display()
            ))),
        }
    }

    fn failure(&self, what: &str, error: &dyn std::error::Error) -> Failure {
        Failure::other(format!(
            "{what} {}: {}",
            self.path.display(),
            describe_error(error)
        ))
    }

    fn create_dir(&self) -> io::Result<()> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&self.dir)
    }

    fn temp_path(&self) -> PathBuf {
        self.dir
            .join(format!(".{FILE_NAME}.{}.tmp", std::process::id()))
    }

    fn write_atomically(&self, bytes: &[u8]) -> io::Result<()> {
        self.create_dir()?;
        let temp = self.temp_path();
        let result = (|| {
            let mut file = private_file(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&temp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

/// A new file that only its owner can read or write.
fn private_file(path: &Path) -> io::Result<fs::File> {
    // A stale file from a crashed run would keep its old mode: start afresh.
    let _ = fs::remove_file(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remember_select_and_default() {
        let home = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(home.path().join("nested"));
        assert_eq!(store.select(None).unwrap_err().exit, crate::Exit::Auth);

        store.remember("alice", "s1").unwrap();
        store.remember("bob", "s2").unwrap();
        assert_eq!(store.select(None).unwrap(), ("bob".into(), "s2".into()));
        assert_eq!(
            store.select(Some("alice")).unwrap(),
            ("alice".into(), "s1".into())
        );
        assert_eq!(
            store.select(Some("carol")).unwrap_err().exit,
            crate::Exit::Auth
        );

        // Logging in again is what makes a user the default.
        store.remember("alice", "s1").unwrap();
        assert_eq!(store.select(None).unwrap().0, "alice");
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(home.path());
        store.check_writable().unwrap();
        store.remember("alice", "s1").unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Only credentials.json is left behind.
        let names: Vec<_> = fs::read_dir(home.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_set() {
        let home = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(home.path());
        fs::write(store.path(), "{not json").unwrap();
        let failure = store.load().unwrap_err();
        assert!(
            failure.message.contains("cannot parse"),
            "{}",
            failure.message
        );
    }
}
