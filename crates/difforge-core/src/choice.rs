//! Enums whose values are names in configs, flags and requests. One macro gives each such enum
//! its list of names, and from that one list: parsing, the name of a value, serde in both
//! directions, and the "expected ..." text of error messages. Adding a value is one line.

/// An enum chosen by name.
pub trait Choice: Sized + Copy + PartialEq + 'static {
    /// Every value with its name, in the order they are listed to users.
    const ALL: &'static [(Self, &'static str)];

    fn name(self) -> &'static str {
        Self::ALL.iter().find(|(v, _)| *v == self).map_or("?", |(_, n)| n)
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(v, _)| *v)
    }

    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|(_, n)| *n).collect()
    }

    /// `"a", "b" or "c"`, for error messages.
    fn expected() -> String {
        one_of(&Self::names())
    }
}

/// `"a", "b" or "c"`.
pub fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Declares an enum chosen by name: `choice! { pub enum Mode { A = "a", B = "b" } }`.
/// Doc comments on the enum and on each value are kept.
#[macro_export]
macro_rules! choice {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $crate::choice::Choice for $name {
            const ALL: &'static [(Self, &'static str)] = &[$(($name::$variant, $text)),+];
        }

        impl $name {
            /// The name of this value.
            pub fn name(self) -> &'static str {
                <Self as $crate::choice::Choice>::name(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <Self as $crate::choice::Choice>::parse(s)
                    .ok_or_else(|| format!("\"{s}\": expected {}", <Self as $crate::choice::Choice>::expected()))
            }
        }

        impl $crate::serde::Serialize for $name {
            fn serialize<S: $crate::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> $crate::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as $crate::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err($crate::serde::de::Error::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    choice! {
        /// A test enum.
        enum Colour { Red = "red", Deep = "deep-blue" }
    }

    #[test]
    fn names_parse_and_serde_come_from_one_list() {
        assert_eq!(Colour::Deep.name(), "deep-blue");
        assert_eq!("red".parse::<Colour>(), Ok(Colour::Red));
        assert_eq!("green".parse::<Colour>().unwrap_err(), "\"green\": expected \"red\" or \"deep-blue\"");
        assert_eq!(Colour::expected(), "\"red\" or \"deep-blue\"");
        let v: Colour = serde_json::from_str("\"deep-blue\"").unwrap();
        assert_eq!(v, Colour::Deep);
        assert_eq!(serde_json::to_string(&Colour::Red).unwrap(), "\"red\"");
        let err = serde_json::from_str::<Colour>("\"x\"").unwrap_err().to_string();
        assert!(err.contains("expected \"red\" or \"deep-blue\""), "{err}");
        assert_eq!(one_of(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }
}
