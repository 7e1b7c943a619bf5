//! A parsed multi-turn conversation (ShareGPT's `{"conversations": [{"from", "value"}, …]}`).
//!
//! `--dataset` sends only the first user turn of each conversation; the whole conversation is
//! kept here so that replaying it turn by turn (`--turns`) reads the same file with the same
//! parser and the same errors.

use serde::Serialize;

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A system prompt (`system`).
    System,
    /// The user (`human`, `user`).
    User,
    /// The model (`gpt`, `assistant`, `chatgpt`, `bard`, `model`).
    Assistant,
}

impl Role {
    /// ShareGPT's `from` values and the OpenAI role names, case-insensitive.
    pub fn parse(from: &str) -> Option<Self> {
        match from.trim().to_ascii_lowercase().as_str() {
            "system" => Some(Role::System),
            "human" | "user" => Some(Role::User),
            "gpt" | "assistant" | "chatgpt" | "bard" | "model" => Some(Role::Assistant),
            _ => None,
        }
    }

    /// The OpenAI chat role name (what a chat template expects).
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub text: String,
}

/// A conversation in file order. The constructor guarantees at least one user turn, so every
/// conversation has a first request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversation {
    turns: Vec<Turn>,
}

/// Why a list of turns is not a usable conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationError {
    /// No turns at all.
    Empty,
    /// Turns, but none from the user.
    NoUserTurn,
}

impl std::fmt::Display for ConversationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConversationError::Empty => f.write_str("the conversation is empty"),
            ConversationError::NoUserTurn => {
                f.write_str("the conversation has no human turn (\"from\": \"human\")")
            }
        }
    }
}

impl Conversation {
    /// A conversation of `turns`, which must hold at least one user turn.
    pub fn new(turns: Vec<Turn>) -> Result<Self, ConversationError> {
        if turns.is_empty() {
            return Err(ConversationError::Empty);
        }
        if !turns.iter().any(|t| t.role == Role::User) {
            return Err(ConversationError::NoUserTurn);
        }
        Ok(Self { turns })
    }

    /// Every turn, in order.
    pub fn turns(&self) -> &[Turn] {
        &self.turns
    }

    /// The first user turn: the request `--dataset` sends.
    pub fn first_user_turn(&self) -> &str {
        self.turns
            .iter()
            .find(|t| t.role == Role::User)
            .map(|t| t.text.as_str())
            .unwrap_or_default()
    }

    /// How many user turns the conversation has (what `--turns K` can replay at most).
    pub fn user_turns(&self) -> usize {
        self.turns.iter().filter(|t| t.role == Role::User).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: Role, text: &str) -> Turn {
        Turn {
            role,
            text: text.into(),
        }
    }

    #[test]
    fn the_request_is_the_first_user_turn_after_any_system_prompt() {
        let c = Conversation::new(vec![
            turn(Role::System, "be brief"),
            turn(Role::User, "first"),
            turn(Role::Assistant, "answer"),
            turn(Role::User, "second"),
        ])
        .unwrap();
        assert_eq!(c.first_user_turn(), "first");
        assert_eq!(c.user_turns(), 2);
        assert_eq!(c.turns().len(), 4);
    }

    #[test]
    fn empty_and_userless_conversations_are_refused() {
        assert_eq!(Conversation::new(vec![]), Err(ConversationError::Empty));
        let e = Conversation::new(vec![turn(Role::Assistant, "hi")]).unwrap_err();
        assert_eq!(e, ConversationError::NoUserTurn);
        assert!(e.to_string().contains("no human turn"));
    }

    #[test]
    fn sharegpt_and_openai_role_names_are_understood() {
        assert_eq!(Role::parse("human"), Some(Role::User));
        assert_eq!(Role::parse("GPT"), Some(Role::Assistant));
        assert_eq!(Role::parse("assistant"), Some(Role::Assistant));
        assert_eq!(Role::parse("system"), Some(Role::System));
        assert_eq!(Role::parse("tool"), None);
        assert_eq!(Role::User.name(), "user");
    }
}
