"""Strings that tokenizers get wrong: scripts, whitespace, digits, emoji, special-token text.

Hand-written cases first, then programmatic ones (digit runs, whitespace runs, normalization
forms, combinations). Deterministic: no randomness, so a failure names the same string twice.
"""

from __future__ import annotations

import unicodedata

PROSE = [
    "Hello world",
    "Write a haiku about GPUs",
    "The quick brown fox jumps over the lazy dog.",
    "It's a dog's life, isn't it? We'll see; they'd've known. I'M SHOUTING, YOU'RE NOT.",
    "don't DON'T Don't 'quoted' \"double\" `backtick`",
    "e.g. i.e. etc... Mr. Smith & Mrs. Jones (née Brown) paid $3.50 + 20% tax = $4.20!",
    "A sentence with a trailing space ",
    " leading space",
    "  two leading spaces",
    "   three leading and trailing   ",
    "CamelCaseIdentifiersLikeThisOne and snake_case_ones and SCREAMING_SNAKE",
    "URLs: https://example.com/path?q=1&r=two#frag and mailto:someone@example.org",
    "Email me at first.last+tag@sub.example.co.uk",
    "Hashtags #AI #gpu_poor @mention",
    "Punctuation!!! ??? ... --- ___ *** ~~~ ^^^ ||| <<< >>> === +++",
    "Mixed 'single' and ‘curly’ quotes, “double curly”, «guillemets», „low“",
    "Em—dash, en–dash, minus − and hyphen-minus -",
    "Ellipsis… and bullet • and middot · and section § and pilcrow ¶",
    "Math: ∀x∈ℝ, ∃y: x² + y² ≤ 1 ⇒ |x| ≤ 1; ∑ᵢ aᵢ = ∫₀¹ f(t) dt ≈ π/4 ± ε",
    "Currency: € 5, £10, ¥100, ₹250, ₩1000, ₿0.01, $ 7",
    "Temperature: 25°C / 77°F, angle 90°, 5′ 11″",
    "Fractions ½ ⅓ ¼ ¾ and superscripts ¹²³ and subscripts ₁₂₃",
    "Roman numerals Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ and circled ① ② ③",
    "Full-width ＡＢＣ ａｂｃ １２３ ！？",
    "Ligatures ﬁ ﬂ ﬀ and long s ſ and eszett ß ẞ",
    "Latin-1: àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞ",
    "Extended Latin: ĀāĂăĄąĆćĈĉĊċČčĎďĐđ ŁłŃńŅņŇňŊŋ Œœ Šš Žž ǅ ǈ ǋ",
    "Vietnamese: Tiếng Việt có dấu: ở đây, người ta nói rằng",
    "Polish: Zażółć gęślą jaźń",
    "Turkish: İstanbul'da ılık bir gün; I ı İ i",
    "Icelandic: Þetta er íslenska, með ð og þ",
    "German: Größenwahn, Übermut, Ärger, Öl",
    "French: L'été dernier, j'ai mangé des crêpes à Paris.",
    "Spanish: ¿Dónde está el baño? ¡Olé! Año, niño, pingüino",
    "Greek: Καλημέρα κόσμε, ΑΒΓΔ αβγδ ς σ ΐ ΰ",
    "Cyrillic: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ukrainian: Гей, хлопці, їжак, ґанок, є",
    "Mixed case: αβΓΔ iPhone XMLHttpRequest eBay McDonald's ΑΒΓΔαβγδ",
    "Armenian: Բարեւ աշխարհ, Georgian: გამარჯობა მსოფლიო",
]

CODE = [
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "import numpy as np\n\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)\n",
    'class Foo(Bar):\n    """Docstring."""\n\n    def __init__(self):\n        super().__init__()\n',
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }',
    'fn main() {\n    let v: Vec<u8> = vec![1, 2, 3];\n    println!("{:?}", v);\n}\n',
    "const f = async (x) => { await fetch(`/api/${x}`); };",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    '<html><body><div class="main">Hello &amp; welcome</div></body></html>',
    '{"key": "value", "list": [1, 2.5, -3e10, true, null], "nested": {"a": {}}}',
    "key: value\nlist:\n  - one\n  - two\nnested:\n  deep: true\n",
    '#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo "$f"; done 2>&1 | tee log',
    'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hi")\n}\n',
    "public static void main(String[] args) { System.out.println(args.length); }",
    "x = [i**2 for i in range(10) if i % 2 == 0]  # squares of evens",
    "    indented with four spaces\n        and eight\n\t\tand two tabs\n",
    "a==b!=c<=d>=e->f=>g::h..i...j//k/*l*/m<<n>>o&&p||q",
    "regex: ^[a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\\.[a-zA-Z0-9-.]+$",
    "\\documentclass{article}\n\\begin{equation} E = mc^2 \\end{equation}",
    "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,3 +1,4 @@\n-old\n+new\n",
    "0x1F 0b1010 0o777 1_000_000 3.14159 6.022e23 -0.0 1e-9",
    'main.py:42: error: Incompatible types in assignment (expression has type "str")',
]

WHITESPACE = [
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\n\n",
    "\n\n\n\n",
    " \n ",
    "a\tb\tc",
    "line1\nline2\nline3",
    "line1\r\nline2\r\nline3\r\n",
    "trailing spaces   \nnext line",
    "spaces    between    words",
    "mixed \t \n \r\n \t\t  end",
    "\t\tleading tabs",
    "word\n\n\nword",
    "a \n\n b",
    "x\u00a0y",  # no-break space
    "x\u2003y\u2009z",  # em space, thin space
    "x\u3000y",  # ideographic space
    "x\u200by",  # zero-width space (not whitespace)
    "x\u2028y\u2029z",  # line and paragraph separators
    "x\u0085y",  # next line
    "x\x0bvertical\x0cfeed",
    "form\x1cfile\x1dgroup\x1erecord\x1funit",
    "bell\x07 backspace\x08 escape\x1b[0m",
    "\r",
    "\r\r\n\n\r",
    " \t",
    "end with newline\n",
]

CJK = [
    "你好，世界！",
    "我爱北京天安门，天安门上太阳升。",
    "人工智能正在改变世界。这是一个测试句子，包含标点符号：“引号”、（括号）和《书名号》。",
    "繁體中文：電腦、網路、資訊",
    "中文English混合text，数字123和符号%",
    "日本語のテキストです。カタカナとひらがなと漢字。",
    "こんにちは、世界！今日はいい天気ですね。",
    "ｶﾀｶﾅ半角 and 全角カタカナ",
    "東京都渋谷区1-2-3　ビル５階",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "한글 자모: ㄱㄴㄷㄹ ㅏㅑㅓㅕ",
    "韓國語 漢字 한자 混用",
    "𠀀𠀁 𪚥 𩸽 (CJK extension B and beyond)",
]

RTL_INDIC_SEA = [
    "مرحبا بالعالم",
    "السلام عليكم ورحمة الله وبركاته",
    "العربية مع تشكيل: بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ",
    "Arabic digits ٠١٢٣٤٥٦٧٨٩ and Persian ۰۱۲۳۴۵۶۷۸۹",
    "שלום עולם",
    "עברית עם ניקוד: בְּרֵאשִׁית בָּרָא",
    "Mixed RTL: hello שלום world مرحبا 123",
    "नमस्ते दुनिया",
    "हिन्दी में लिखा गया वाक्य। क्षत्रिय, ज्ञान, श्री",
    "Devanagari digits ०१२३४५६७८९",
    "বাংলা ভাষা",
    "தமிழ் மொழி",
    "తెలుగు భాష",
    "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "สวัสดีครับ ยินดีต้อนรับ",
    "Thai digits ๐๑๒๓๔๕๖๗๘๙",
    "ລາວ ພາສາ",
    "ខ្មែរ",
    "မြန်မာ",
    "አማርኛ ቋንቋ",
    "ᠮᠣᠩᠭᠣᠯ",
    "ᚠᚢᚦᚨᚱᚲ runes",
]

EMOJI = [
    "🙂",
    "Hello 👋 world 🌍!",
    "👨‍👩‍👧‍👦 family",
    "👩🏽‍💻 coder with skin tone",
    "🏳️‍🌈 🏴‍☠️ flags with ZWJ",
    "🇺🇸🇬🇧🇯🇵🇫🇷🇩🇪 regional indicator flags",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿 tag sequence flag",
    "❤️ ❤ ♥️ variation selectors",
    "1️⃣ 2️⃣ #️⃣ keycaps",
    "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "🤖🧠💡🚀🔥✨🎉",
    "emoji🙂glued🙂to🙂words",
    "🧑‍🤝‍🧑 🫠 🫶 🪿 newer emoji",
    "☺ ☹ ☃ ★ ☆ ♠ ♣ ♦ ♥ ✓ ✗ ✔ ✘",
    "→ ← ↑ ↓ ↔ ⇐ ⇒ ⟶ ⟵",
    "Box drawing ┌─┐│└┘ and blocks █▓▒░",
    "Braille ⠓⠑⠇⠇⠕",
    "Private use \ue000\uf8ff and replacement \ufffd",
    "BOM \ufeff at start and zero-width joiner a\u200db non-joiner a\u200cb",
    "LRM \u200e RLM \u200f LRE \u202a PDF \u202c",
]

COMBINING = [
    "e\u0301",  # e + combining acute
    "a\u0300\u0301\u0302\u0303\u0304",  # stacked marks
    "Z\u0335\u0321a\u0334\u0322l\u0336g\u0337o\u0338",  # zalgo-ish
    "n\u0303o\u0308",
    "\u0301 leading combining mark",
    "q\u0307\u0323",
    "ᄀ\u1161\u11a8 conjoining jamo",
]

SPECIAL_TEXT = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "Text before <|im_end|> text after",
    "<|endoftext|><|endoftext|>",
    "<|im_start|>",
    "< |im_end| >",
    "<|im_end",
    "|im_end|>",
    "<s>hello</s>",
    "</s>",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "<reponame>repo<file_sep>path",
    "<|eot_id|> <|start_header_id|>user<|end_header_id|>",
    "[INST] hello [/INST]",
    "<unk> <pad> <mask> [CLS] [SEP]",
    "<<SYS>>\nsystem\n<</SYS>>",
]


def _digits() -> list[str]:
    out = []
    for n in range(1, 17):
        out.append("1234567890123456"[:n])
    out += ["0", "00", "000", "0000", "007", "100000", "3.14159265358979", "1,234,567.89", "-42", "+1e-10"]
    out += ["year 2024", "v1.2.3-rc4", "2024-01-15T10:30:00Z", "192.168.0.1", "+1 (555) 123-4567"]
    out += ["a1b22c333d4444e55555", "１２３４５", "12345678901234567890123456789012345678901234567890"]
    return out


def _whitespace_runs() -> list[str]:
    out = []
    for ch in (" ", "\t", "\n", "\r\n"):
        for n in (1, 2, 3, 5, 8, 17):
            out.append(f"a{ch * n}b")
            out.append(f"{ch * n}x")
            out.append(f"x{ch * n}")
    for n in (1, 2, 4, 16, 33):
        out.append(" " * n)
    return out


def _normalization() -> list[str]:
    base = ["café", "naïve résumé", "Ångström", "한국어", "ḱṷṓn", "Việt Nam", "ﬁ ﬃ", "①②", "Å Ω K"]
    out = []
    for s in base:
        for form in ("NFC", "NFD", "NFKC", "NFKD"):
            t = unicodedata.normalize(form, s)
            if t not in out:
                out.append(t)
    return out


def _combos() -> list[str]:
    words = ["hello", "世界", "🙂", "123", "<|im_end|>", "  ", "\n", "Ünïcödé", "مرحبا"]
    return [a + b for a in words for b in words if a != b][:40]


def _long() -> list[str]:
    return [
        " ".join(PROSE[:6]),
        "\n".join(CODE[:4]),
        "".join(CJK[:3]) * 2,
        "ab" * 300,
        "a" * 257,
        "🙂" * 50,
        "-" * 100 + "=" * 100,
        "\n" * 64,
    ]


def build() -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for s in (
        *PROSE, *CODE, *WHITESPACE, *CJK, *RTL_INDIC_SEA, *EMOJI, *COMBINING, *SPECIAL_TEXT,
        *_digits(), *_whitespace_runs(), *_normalization(), *_combos(), *_long(),
    ):  # fmt: skip
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


CORPUS: list[str] = build()

# Prompts for the chat path (template + parse_special=True).
CHAT_PROMPTS: list[str] = [
    "Write a haiku about GPUs",
    "你好，请介绍一下你自己。",
    "Explain <|im_end|> tokens",  # user text that spells a control token
    "Line one\nLine two\n\n  indented",
    "</s> and <|endoftext|> inside a prompt",
    "🙂👨‍👩‍👧",
]
