"""Write tests/oracles/refs/<model>.json: llama.cpp's token ids for the GGUFs whose tokenizer
edge-pack rebuilds from metadata. Run through llama_tokenize_refs.sh (it sets the paths).

Per model:
- wiki: wiki.test.raw read as bytes, tokenized whole (no BOS, special tokens not parsed): the id
  count, an FNV-1a-64 of the ids (u32 little-endian) and one such digest per 4096-id chunk, so a
  mismatch can be located without storing 300k ids;
- cases: tricky strings and 300 lines of wiki.test.raw (by line number), each with its ids
  (no BOS, special tokens parsed);
- plain: strings with special-token markup, tokenized with special tokens NOT parsed;
- bos: one string with the model's own BOS rule;
- chat: prompts rendered by the chat template (Hugging Face transformers' renderer when
  importable, else jinja2 set up the same way), and their ids (special tokens parsed, no BOS added
  beyond what the template writes).
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA_BIN = os.environ["LLAMA_BIN"]
LLAMA_MODELS = os.environ["LLAMA_MODELS"]
MODELS = os.environ["MODELS"]
CACHE = os.environ["CACHE"]
DATA = os.environ["DATA"]
sys.path.insert(0, os.path.join(LLAMA_BIN, "..", "..", "gguf-py"))

# name -> (gguf, separator: a control token splitting a batch of strings, chat template source)
MODELS_TABLE = {
    "qwen2.5-coder-0.5b": (os.path.join(CACHE, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), "<|endoftext|>", "gguf"),
    "gemma3-270m": (os.path.join(CACHE, "gemma-3-270m-q4_k_m.gguf"), "<eos>", os.path.join(HERE, "gemma3-it-chat-template.jinja")),
    "smollm2-135m": (os.path.join(MODELS, "smollm2-135m-instruct-q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf"), "<|endoftext|>", "gguf"),
    # llama.cpp's own test vocabulary: the Llama 2 SentencePiece vocabulary, identical (pieces,
    # scores, types) to shared/models/llama2c/tokenizer.model, which the Rust test reads.
    "llama2-spm": (os.path.join(LLAMA_MODELS, "ggml-vocab-llama-spm.gguf"), "</s>", None),
}

CASES = [
    "Hello world",
    " Hello  world   ",
    "  leading two spaces",
    "\n\nDouble newline\n",
    "tab\there\tand\r\nCRLF\r\n",
    "Numbers: 1234567890 3.14159 -42 1,000,000 2024-06-01 0x1F 1e-9",
    "Emoji: \U0001F600\U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 \U0001F1FA\U0001F1F8",
    "CJK: 你好，世界！日本語のテキスト。한국어 텍스트",
    "Accents: café naïve résumé Ångström Zürich ÀÁÂÃÄÅ àáâãäå",
    "Decomposed: e\u0301 n\u0303 a\u0308",
    "Code:\n    def f(x):\n        return x ** 2  # square\n\tif (a && b) { c[i] = d->e; }\n",
    "Whitespace runs:          end",
    "a\u00a0b\u2003c\u3000d",
    "Mixed scripts: Привет мир Γειά σου κόσμε مرحبا بالعالم שלום עולם नमस्ते",
    "Contractions: I'm you're he's they've we'll she'd DON'T I'M It'S",
    "Punctuation!!! ??? ... --- *** ### ``` ~~~ ===== <<<>>>",
    "URL https://example.com/path?q=1&r=2#frag and email a.b@c.de",
    "Math: ∑_{i=1}^{n} x_i² ≤ ∞ ± √2 ≠ π",
    "Zero-width: a\u200bb\u200cc\u200dd\ufeffe",
    "Control chars: \x01\x02\x7f end",
    "Rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 ꙮ \U0010FFFD",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "----------------------------------------",
    "................................",
    "1111111111111111111111111111",
    "   \n   \n\t\t\n",
    " ",
    "\n",
    "a",
    "Hyphen-ated words and snake_case_names and CamelCaseNames and ALLCAPS.",
    "Tabs\t\t\tand\x0bvertical\x0cform feed",
    "Quote \"double\" 'single' «guillemets» “curly” ‘curly’",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "text<|im_end|>more text",
    "<unk> <s> </s> <pad> <bos> <eos>",
    " = Robert Boulter = \n",
]

PLAIN = [
    "<|im_start|>user\nHi<|im_end|>",
    "<start_of_turn>user\nHi<end_of_turn>",
    "<s>[INST] hi [/INST]</s>",
    "<bos><eos><unk>",
]

CHATS = [
    (None, "What is 2+2?"),
    ("You are terse.", "Write a haiku about tokenizers."),
]

N_LINES = 300
CHUNK = 4096


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in i.to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def llama_tokenize(gguf, data: bytes, *, bos: bool, special: bool):
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
        path = f.name
    try:
        cmd = [os.path.join(LLAMA_BIN, "llama-tokenize"), "-m", gguf, "-f", path, "--ids", "--no-escape", "--log-disable"]
        if not bos:
            cmd.append("--no-bos")
        if not special:
            cmd.append("--no-parse-special")
        env = dict(os.environ, LD_LIBRARY_PATH=LLAMA_BIN)
        out = subprocess.run(cmd, check=True, capture_output=True, env=env).stdout.decode()
    finally:
        os.unlink(path)
    line = [l for l in out.splitlines() if l.startswith("[")][-1]
    return json.loads(line)


def tokenize_many(gguf, texts, sep, sep_id):
    """Each text's ids (no BOS, special tokens parsed): one llama-tokenize run over the texts
    joined by a control token, which llama.cpp splits on before tokenizing each piece on its own."""
    batch = [t for t in texts if sep not in t]
    ids = llama_tokenize(gguf, sep.join(batch).encode(), bos=False, special=True)
    parts, cur = [], []
    for i in ids:
        if i == sep_id:
            parts.append(cur)
            cur = []
        else:
            cur.append(i)
    parts.append(cur)
    assert len(parts) == len(batch), (len(parts), len(batch))
    got = dict(zip(batch, parts))
    for t in texts:
        if t not in got:
            got[t] = llama_tokenize(gguf, t.encode(), bos=False, special=True)
    return [got[t] for t in texts]


def gguf_meta(gguf):
    import gguf as g

    r = g.GGUFReader(gguf)
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8", "replace") for i in f["tokenizer.ggml.tokens"].data]

    def scalar(k):
        return f[k].contents() if k in f else None

    return tokens, scalar("tokenizer.ggml.bos_token_id"), scalar("tokenizer.ggml.eos_token_id"), scalar("tokenizer.chat_template")


def render_chat(template, system, user, bos, eos):
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    try:
        from transformers.utils.chat_template_utils import render_jinja_template

        out = render_jinja_template([msgs], chat_template=template, add_generation_prompt=True, bos_token=bos, eos_token=eos)
        out = out[0] if isinstance(out, tuple) else out
        return (out[0] if isinstance(out, list) else out), "transformers"
    except ImportError:
        import jinja2

        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(m):
            raise RuntimeError(m)

        env.globals["raise_exception"] = raise_exception
        return env.from_string(template).render(messages=msgs, add_generation_prompt=True, bos_token=bos, eos_token=eos), "jinja2"


def dump(path, ref):
    # One case per line: readable diffs, compact ids.
    lines = ["{"]
    items = list(ref.items())
    for k, (key, val) in enumerate(items):
        end = "," if k + 1 < len(items) else ""
        if isinstance(val, list) and val and isinstance(val[0], dict):
            lines.append(f"  {json.dumps(key)}: [")
            lines += [f"    {json.dumps(v, ensure_ascii=False)}" + ("," if j + 1 < len(val) else "") for j, v in enumerate(val)]
            lines.append(f"  ]{end}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(val, ensure_ascii=False)}{end}")
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    names = sys.argv[1:] or list(MODELS_TABLE)
    wiki_path = os.path.join(DATA, "wikitext-2-raw", "wiki.test.raw")
    wiki = open(wiki_path, "rb").read()
    lines = wiki.decode().split("\n")
    nonempty = [i for i, l in enumerate(lines) if l.strip()]
    picked = nonempty[:: max(1, len(nonempty) // N_LINES)][:N_LINES]
    version = subprocess.run(
        [os.path.join(LLAMA_BIN, "llama-tokenize"), "--version"], capture_output=True, env=dict(os.environ, LD_LIBRARY_PATH=LLAMA_BIN)
    )
    version = (version.stdout + version.stderr).decode().strip().splitlines()[0]
    os.makedirs(os.path.join(HERE, "refs"), exist_ok=True)
    for name in names:
        gguf, sep, chat_src = MODELS_TABLE[name]
        tokens, bos_id, eos_id, gguf_template = gguf_meta(gguf)
        sep_id = tokens.index(sep)
        print(f"{name}: {gguf}", file=sys.stderr)

        ids = llama_tokenize(gguf, wiki, bos=False, special=False)
        chunks = [fnv1a64(ids[i : i + CHUNK]) for i in range(0, len(ids), CHUNK)]
        texts = CASES + [lines[i] for i in picked]
        case_ids = tokenize_many(gguf, texts, sep, sep_id)
        cases = [{"text": t, "ids": x} for t, x in zip(CASES, case_ids)]
        cases += [{"wiki_line": i, "ids": x} for i, x in zip(picked, case_ids[len(CASES) :])]
        plain = [{"text": t, "ids": llama_tokenize(gguf, t.encode(), bos=False, special=False)} for t in PLAIN]
        bos = {"text": "Hello world", "ids": llama_tokenize(gguf, b"Hello world", bos=True, special=True)}

        chat = []
        template = gguf_template if chat_src == "gguf" else (open(chat_src).read() if chat_src else None)
        if template:
            bos_t = tokens[bos_id] if bos_id is not None else ""
            eos_t = tokens[eos_id] if eos_id is not None else ""
            for system, user in CHATS:
                text, how = render_chat(template, system, user, bos_t, eos_t)
                chat.append({"system": system, "user": user, "rendered": text, "renderer": how,
                             "ids": llama_tokenize(gguf, text.encode(), bos=False, special=True)})

        ref = {
            "model": name,
            "gguf": os.path.basename(gguf),
            "oracle": f"llama-tokenize ({version})",
            "chat_template": None if chat_src in (None, "gguf") else os.path.basename(chat_src),
            "wiki": {"file": "wikitext-2-raw/wiki.test.raw", "bytes": len(wiki), "count": len(ids),
                     "fnv1a64": fnv1a64(ids), "chunk": CHUNK, "chunks": chunks},
            "bos": bos,
            "plain": plain,
            "chat": chat,
            "cases": cases,
        }
        dump(os.path.join(HERE, "refs", f"{name}.json"), ref)
        print(f"  {len(ids)} wiki ids, {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
