//! Every expected string below was derived by reading the template and
//! then checked against transformers 5.24.0's `render_jinja_template`
//! (what `apply_chat_template(..., tokenize=False)` calls) on Jinja2
//! 3.1.6, with the same messages and special tokens.

use super::python::push_python_float;
use super::*;

fn msgs<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<ChatMessage<'a>> {
    pairs
        .iter()
        .map(|&(role, content)| ChatMessage::new(role, content))
        .collect()
}

fn render(template: &ChatTemplate, pairs: &[(&str, &str)], agp: bool) -> String {
    template.render(&msgs(pairs), agp).unwrap()
}

/// SmolLM2-135M-Instruct's template, as in its tokenizer_config.json
/// (where the JSON `\n` escapes become newlines; here they are Jinja
/// string escapes, which render the same).
const SMOLLM2: &str = r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The classic Llama-2-chat template.
const LLAMA2: &str = r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

/// Llama-3-instruct's template.
const LLAMA3: &str = r"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const SMOL_SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

#[test]
fn smollm2_adds_its_default_system_prompt() {
    let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>".into())).unwrap();
    assert_eq!(
        render(&t, &[("user", "Hello!")], true),
        format!("{SMOL_SYSTEM}<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n")
    );
    assert_eq!(
        render(&t, &[("user", "Hello!")], false),
        format!("{SMOL_SYSTEM}<|im_start|>user\nHello!<|im_end|>\n")
    );
}

#[test]
fn smollm2_keeps_a_given_system_prompt() {
    let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>".into())).unwrap();
    let conversation = [
        ("system", "You are a pirate."),
        ("user", "Hi"),
        ("assistant", "Arr!"),
        ("user", "Where is the treasure?"),
    ];
    assert_eq!(
        render(&t, &conversation, true),
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nArr!<|im_end|>\n\
             <|im_start|>user\nWhere is the treasure?<|im_end|>\n\
             <|im_start|>assistant\n"
    );
    assert_eq!(
        render(&t, &conversation[..3], false),
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nArr!<|im_end|>\n"
    );
}

#[test]
fn llama2_folds_the_system_prompt_into_the_first_turn() {
    let t = ChatTemplate::new(LLAMA2, Some("<s>".into()), Some("</s>".into())).unwrap();
    let conversation = [
        ("system", "Be brief."),
        ("user", " Hi there "),
        ("assistant", " Hello! "),
        ("user", "Bye"),
    ];
    // `.strip()` trims the whole "<<SYS>>...\n\n Hi there " string, so the
    // space after the blank line stays.
    assert_eq!(
            render(&t, &conversation, true),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi there [/INST] Hello! </s><s>[INST] Bye [/INST]"
        );
    assert_eq!(render(&t, &[("user", "Hi")], true), "<s>[INST] Hi [/INST]");
}

#[test]
fn llama2_raise_exception_message_surfaces() {
    let t = ChatTemplate::new(LLAMA2, Some("<s>".into()), Some("</s>".into())).unwrap();
    let err = t
        .render(&msgs(&[("user", "a"), ("user", "b")]), true)
        .unwrap_err();
    match &err {
        ChatTemplateError::Raised { origin, message } => {
            assert_eq!(
                message,
                "Conversation roles must alternate user/assistant/user/assistant/..."
            );
            assert_eq!(origin, INLINE_ORIGIN);
        }
        other => panic!("expected Raised, got {other:?}"),
    }
    assert!(err
        .to_string()
        .ends_with(": Conversation roles must alternate user/assistant/user/assistant/..."));
}

#[test]
fn llama3_trims_content_and_prefixes_bos() {
    let t = ChatTemplate::new(
        LLAMA3,
        Some("<|begin_of_text|>".into()),
        Some("<|eot_id|>".into()),
    )
    .unwrap();
    assert_eq!(
        render(
            &t,
            &[("system", "You are helpful."), ("user", "  What's up?\n")],
            true
        ),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWhat's up?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(
        render(&t, &[("user", "Hi"), ("assistant", "Hello!")], false),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    );
}

/// namespace(), tojson (HF's: `, `/`: ` separators, no HTML escaping,
/// non-ASCII kept), strftime_now, Python string/dict methods, loop
/// variables, slicing, default, undefined values, `~` and `+`, and
/// trim_blocks/lstrip_blocks on an indented multi-line template.
const FEATURES: &str = r#"{%- set ns = namespace(system='', users=0) -%}
{%- for m in messages -%}
    {%- if m.role == 'system' -%}
        {%- set ns.system = m.content -%}
    {%- elif m.content.startswith('/') -%}
        {{- raise_exception('commands are not allowed: ' + m.content) -}}
    {%- else -%}
        {%- set ns.users = ns.users + 1 -%}
    {%- endif -%}
{%- endfor -%}
system={{ ns.system | tojson }} turns={{ ns.users }}
last={{ messages[-1] | tojson }}
{% if strftime_now is defined %}
year digits={{ strftime_now('%Y') | length }}
{% endif %}
{% for m in messages[1:] %}
    {{ loop.index }}/{{ loop.length }} {{ m.role }}: {{ m.content | trim }}{{ ' (last)' if loop.last }}
{% endfor %}
[{{ undefined_var }}][{{ messages[0].name | default('anon') }}][{{ messages[0].items() | list | length }}][{{ messages | selectattr('role', 'equalto', 'user') | list | length }}]
{{ ('<' ~ messages[0].role ~ '>') + messages[0].content.strip().upper() }}
"#;

#[test]
fn jinja_features_chat_templates_use() {
    let t = ChatTemplate::new(FEATURES, None, None).unwrap();
    let conversation = [
        ("system", "Sé \"brief\""),
        ("user", "  hi  "),
        ("assistant", "hello"),
    ];
    assert_eq!(
        render(&t, &conversation, true),
        "system=\"Sé \\\"brief\\\"\" turns=2\n\
             last={\"role\": \"assistant\", \"content\": \"hello\"}\n\
             year digits=4\n    \
             1/2 user: hi\n    \
             2/2 assistant: hello (last)\n\
             [][anon][2][1]\n\
             <system>SÉ \"BRIEF\""
    );
    let err = t
        .render(&msgs(&[("user", "/delete everything")]), true)
        .unwrap_err();
    assert!(
        matches!(&err, ChatTemplateError::Raised { message, .. }
                if message == "commands are not allowed: /delete everything"),
        "{err:?}"
    );
}

/// `{% break %}` and `{% continue %}` (Jinja's loopcontrols extension,
/// which transformers turns on) need minijinja's `loop_controls` feature.
#[test]
fn loop_controls() {
    let source = "{% for m in messages %}\n\
                      {% if m.role == 'system' %}{% continue %}{% endif %}\n\
                      {% if m.content.startswith('STOP') %}{% break %}{% endif %}\n\
                      {{ m.role }}={{ m.content }};\n\
                      {% endfor %}";
    // Without the feature this fails to compile, saying so.
    let t = ChatTemplate::new(source, None, None).unwrap_or_else(|err| panic!("{err}"));
    let conversation = [
        ("system", "s"),
        ("user", "a"),
        ("assistant", "b"),
        ("user", "STOP now"),
        ("assistant", "never"),
    ];
    assert_eq!(render(&t, &conversation, true), "user=a;\nassistant=b;\n");
}

#[test]
fn strftime_now_formats_local_time() {
    let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", None, None).unwrap();
    let before = chrono::Local::now().format("%Y-%m-%d").to_string();
    let got = render(&t, &[], false);
    let after = chrono::Local::now().format("%Y-%m-%d").to_string();
    assert!(got == before || got == after, "{got}");
}

#[test]
fn values_print_as_python_does() {
    let t = ChatTemplate::new(
            "{{ none }}|{{ true }}|{{ 1.0 }}|{{ 10 / 4 }}|{{ 1e20 }}|{{ 1e-5 }}|{{ [1, 'it\\'s', none] }}|{{ messages[0] }}|{{ add_generation_prompt }}|{{ tools }}",
            None,
            None,
        )
        .unwrap();
    assert_eq!(
            render(&t, &[("user", "hi")], true),
            "None|True|1.0|2.5|1e+20|1e-05|[1, \"it's\", None]|{'role': 'user', 'content': 'hi'}|True|None"
        );
}

#[test]
fn tojson_takes_hf_arguments() {
    let t = ChatTemplate::new(
            "{{ messages[0] | tojson(indent=2) }}|{{ 'é🙂' | tojson(ensure_ascii=true) }}|{{ [1, 2.5, none] | tojson(separators=(',', ':')) }}|{{ messages[0] | tojson(sort_keys=true) }}|{{ '<a & b>\\n' | tojson }}|{{ [[], {}] | tojson(indent=1) }}",
            None,
            None,
        )
        .unwrap();
    assert_eq!(
            render(&t, &[("user", "hi")], true),
            "{\n  \"role\": \"user\",\n  \"content\": \"hi\"\n}|\"\\u00e9\\ud83d\\ude42\"|[1,2.5,null]|{\"content\": \"hi\", \"role\": \"user\"}|\"<a & b>\\n\"|[\n [],\n {}\n]"
        );
    let err = ChatTemplate::new("{{ nothing | tojson }}", None, None)
        .unwrap()
        .render(&[], true)
        .unwrap_err();
    assert!(err.to_string().contains("not JSON serializable"), "{err}");
}

#[test]
fn whitespace_control_matches_jinja() {
    // trim_blocks, lstrip_blocks, a dropped final newline, \r\n read as \n.
    let t = ChatTemplate::new(
        "Hello\r\n    {% if true %}\r\n    X\n    {% endif %}\n  {# note #}\nEnd\n",
        None,
        None,
    )
    .unwrap();
    assert_eq!(render(&t, &[], true), "Hello\n    X\nEnd");
}

#[test]
fn undefined_values_behave_as_in_jinja() {
    let t = ChatTemplate::new(
            "[{{ nope }}][{{ messages[0].nope }}][{{ messages[9] }}][{{ nope | length }}][{{ nope is defined }}][{% for x in nope %}x{% endfor %}][{{ pad_token }}]",
            None,
            None,
        )
        .unwrap();
    assert_eq!(render(&t, &[("user", "hi")], true), "[][][][0][False][][]");
    let err = ChatTemplate::new("a\n{{ nope.deeper }}", None, None)
        .unwrap()
        .render(&[], true)
        .unwrap_err();
    assert!(
        matches!(&err, ChatTemplateError::Render { line: Some(2), .. }),
        "{err:?}"
    );
}

#[test]
fn generation_blocks_render_their_body() {
    let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'assistant' %}\n  {% generation %}\n{{ m.content }}\n  {%- endgeneration %}\n{% else %}{{ m.content }}|{% endif %}{% endfor %}",
            None,
            None,
        )
        .unwrap();
    assert_eq!(
        render(&t, &[("user", "q"), ("assistant", "a")], false),
        "q|a"
    );
}

#[test]
fn extra_variables_reach_the_template() {
    let t = ChatTemplate::new("{{ pad_token }}{{ enable_thinking }}", None, None)
        .unwrap()
        .with_variable("pad_token", "<pad>")
        .with_variable("enable_thinking", false);
    assert_eq!(render(&t, &[], true), "<pad>False");
}

#[test]
fn syntax_errors_are_caught_up_front_with_the_line() {
    let err = ChatTemplate::new("line one\n{% if %}\n", None, None).unwrap_err();
    match &err {
        ChatTemplateError::Syntax { line, .. } => assert_eq!(*line, Some(2)),
        other => panic!("expected Syntax, got {other:?}"),
    }
    assert!(err.to_string().contains("template line 2"), "{err}");
}

#[test]
fn python_float_repr() {
    let cases = [
        (1.0, "1.0"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (1e16, "1e+16"),
        (1e15, "1000000000000000.0"),
        (1.5e300, "1.5e+300"),
        (0.0001, "0.0001"),
        (0.00001234, "1.234e-05"),
        (123456789.125, "123456789.125"),
        (-0.0, "-0.0"),
        (f64::NAN, "nan"),
        (f64::NEG_INFINITY, "-inf"),
    ];
    for (f, want) in cases {
        let mut got = String::new();
        push_python_float(&mut got, f, "nan", "inf");
        assert_eq!(got, want, "{f}");
    }
}

#[test]
fn chat_template_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

fn write_config(dir: &tempfile::TempDir, json: &str) -> PathBuf {
    let path = dir.path().join("tokenizer_config.json");
    std::fs::write(&path, json).unwrap();
    path
}

#[test]
fn config_with_string_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": null,
        "chat_template": LLAMA3,
    });
    let path = write_config(&dir, &config.to_string());
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
    assert_eq!(t.bos_token(), Some("<|begin_of_text|>"));
    assert_eq!(t.eos_token(), Some("<|eot_id|>"));
    assert_eq!(t.source(), LLAMA3);
    assert_eq!(
        render(&t, &[("user", "Hi")], true),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn config_with_added_token_objects_and_other_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let added = |content: &str| {
        serde_json::json!({
            "__type": "AddedToken", "content": content, "lstrip": false,
            "normalized": false, "rstrip": false, "single_word": false,
        })
    };
    let config = serde_json::json!({
        "bos_token": added("<s>"),
        "eos_token": added("</s>"),
        "unk_token": added("<unk>"),
        "pad_token": "<pad>",
        "extra_special_tokens": {"image_token": "<image>"},
        "chat_template": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|{{ image_token }}|{{ sep_token is defined }}",
    });
    let path = write_config(&dir, &config.to_string());
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
    assert_eq!(t.bos_token(), Some("<s>"));
    assert_eq!(t.eos_token(), Some("</s>"));
    assert_eq!(render(&t, &[], true), "<s>|</s>|<unk>|<pad>|<image>|False");
}

#[test]
fn config_list_form_picks_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": SMOLLM2},
        ],
        "eos_token": "<|im_end|>",
    });
    let path = write_config(&dir, &config.to_string());
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
    assert_eq!(
        render(&t, &[("user", "Hello!")], false),
        format!("{SMOL_SYSTEM}<|im_start|>user\nHello!<|im_end|>\n")
    );

    let config = serde_json::json!({
        "chat_template": [{"name": "tool_use", "template": "tools"}],
    });
    let path = write_config(&dir, &config.to_string());
    let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Invalid { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        text.contains("default") && text.contains("tool_use"),
        "{text}"
    );
}

#[test]
fn chat_template_jinja_beside_the_config_takes_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        r#"{"chat_template": "from json", "bos_token": "<s>"}"#,
    );
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{{ bos_token }}from file\n",
    )
    .unwrap();
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
    assert_eq!(render(&t, &[], true), "<s>from file");
}

#[test]
fn config_without_chat_template_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, r#"{"bos_token": "<s>", "chat_template": null}"#);
    let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Missing { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("no chat_template"), "{text}");
}

#[test]
fn malformed_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, r#"{"chat_template": "x",,}"#);
    let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Json { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    let missing = dir.path().join("absent").join("tokenizer_config.json");
    let err = ChatTemplate::from_tokenizer_config(&missing).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn bad_token_type_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, r#"{"chat_template": "x", "eos_token": 7}"#);
    let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("eos_token"), "{err}");
}

#[test]
fn syntax_error_in_config_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "chat_template": "{% for m in messages %}\n{{ m.content }}\n{% endif %}\n",
    });
    let path = write_config(&dir, &config.to_string());
    let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
    match &err {
        ChatTemplateError::Syntax { origin, line, .. } => {
            assert_eq!(origin, &path.display().to_string());
            assert_eq!(*line, Some(3));
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("template line 3"), "{text}");
}

#[test]
fn continuing_a_final_message_cuts_right_after_its_content() {
    // ChatML: the cut text is the generation prompt followed by the opening.
    let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>".into())).unwrap();
    let opening = "Sure, here is";
    let chat = msgs(&[("user", "Hello! Sure, here is"), ("assistant", opening)]);
    assert_eq!(
        t.render_continuing(&chat).unwrap(),
        render(&t, &[("user", "Hello! Sure, here is")], true) + opening
    );
    // A template that trims contents: cut after the trimmed opening.
    let t = ChatTemplate::new(LLAMA3, Some("<|begin_of_text|>".into()), None).unwrap();
    let chat = msgs(&[("user", "Hi"), ("assistant", "Sure, here is ")]);
    assert_eq!(
        t.render_continuing(&chat).unwrap(),
        render(&t, &[("user", "Hi")], true) + "Sure, here is"
    );
    // No generation prompt of its own: the rendered chat, cut.
    let t = ChatTemplate::new(LLAMA2, Some("<s>".into()), Some("</s>".into())).unwrap();
    let chat = msgs(&[("user", "Hi"), ("assistant", "Sure")]);
    assert_eq!(
        t.render_continuing(&chat).unwrap(),
        "<s>[INST] Hi [/INST] Sure"
    );
}

#[test]
fn a_template_that_drops_the_opening_cannot_continue_it() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    let e = t
        .render_continuing(&msgs(&[("user", "Hi"), ("assistant", "Sure")]))
        .unwrap_err();
    assert!(e.to_string().contains("cannot be continued"), "{e}");
}
