//! What a valid username, display name and phone number look like.

use crate::ApiError;

/// Usernames are 3 to 32 characters of `a-z 0-9 _ . -`, compared without
/// case: the returned name is lowercase, so `User1` and `user1` are one user.
pub fn normalize_username(raw: &str) -> Result<String, ApiError> {
    let name = raw.to_ascii_lowercase();
    let len = name.chars().count();
    if !(3..=32).contains(&len) {
        return Err(ApiError::InvalidArgument(format!(
            "username must be 3 to 32 characters long (got {len})"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')))
    {
        return Err(ApiError::InvalidArgument(format!(
            "username may contain only a-z, 0-9, '_', '.' and '-' (found {bad:?})"
        )));
    }
    Ok(name)
}

/// A free-text profile field: at most `max` characters, no control
/// characters, surrounding whitespace trimmed.
pub fn profile_field(field: &str, raw: &str, max: usize) -> Result<String, ApiError> {
    let value = raw.trim();
    if value.chars().count() > max {
        return Err(ApiError::InvalidArgument(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(normalize_username("User_1.x-y").unwrap(), "user_1.x-y");
        for bad in ["ab", "", "a b c", "a/b/c", "ünï", "x\0yz", &"a".repeat(33)] {
            assert!(normalize_username(bad).is_err(), "{bad:?} accepted");
        }
    }
}
