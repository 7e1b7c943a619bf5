//! Chat templates for the in-process backends (`--chat`): the model's own Jinja template (GGUF
//! `tokenizer.chat_template`, or tokenizer_config.json / chat_template.jinja) rendered with a real
//! Jinja engine, so `inproc` and `hf` evaluate the same ids as a server applying the template to
//! one user message.

use minijinja::{context, Environment, Error, ErrorKind};

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl ChatTemplate {
    /// Compile `source` with the settings transformers uses for chat templates (trim_blocks,
    /// lstrip_blocks, Python string methods, `raise_exception`).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String {
            chrono::Local::now().format("%d %b %Y").to_string()
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("chat template does not compile: {e}"))?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The text for one user message followed by the assistant's turn.
    pub fn render_user(&self, content: &str) -> Result<String, String> {
        self.render(&[("user", content)], true)
    }

    /// The text for `messages` (role, content) in order, followed by the assistant's turn when
    /// `add_generation_prompt` (`--turns` renders each conversation prefix with this).
    pub fn render(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let t = self.env.get_template("chat").map_err(|e| e.to_string())?;
        let messages: Vec<_> = messages
            .iter()
            .map(|&(role, content)| context! { role => role, content => content })
            .collect();
        t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| format!("chat template: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_renders_one_user_turn() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        assert_eq!(
            t.render_user("Hi there").unwrap(),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn bos_python_methods_and_blocks_behave_like_transformers() {
        let src = "{{ bos_token }}{% for m in messages %}\n  [{{ m['role'].upper() }}] {{ m['content'].strip() }}\n{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        // Same output as Python jinja2 with trim_blocks and lstrip_blocks (checked).
        assert_eq!(t.render_user("  hello  ").unwrap(), "<s>  [USER] hello\n");
        let bad = ChatTemplate::new("{{ raise_exception('only user/assistant roles') }}", "", "")
            .unwrap();
        assert!(bad
            .render_user("x")
            .unwrap_err()
            .contains("only user/assistant roles"));
    }
}
