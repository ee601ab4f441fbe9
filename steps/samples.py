"""Text samples in many scripts (the scenarios name them by language)."""

from __future__ import annotations

SAMPLES: dict[str, str] = {
    "English": "The quick brown fox jumps over the lazy dog.",
    "Chinese": "我们在图形处理器上运行大型语言模型，速度很快。",
    "Japanese": "東京の桜は春に咲きます。ひらがなとカタカナと漢字。",
    "Korean": "안녕하세요, 만나서 반갑습니다.",
    "Arabic": "مرحبا بالعالم، كيف حالك اليوم؟",
    "Hebrew": "שלום עולם, מה שלומך?",
    "Hindi": "नमस्ते दुनिया, आप कैसे हैं?",
    "Russian": "Съешь же ещё этих мягких французских булок.",
    "Greek": "Καλημέρα κόσμε, τι κάνεις;",
    "Thai": "สวัสดีชาวโลก วันนี้อากาศดี",
    "emoji": "GPUs go brrr 🚀🔥 👩‍💻 🇯🇵 🎉",
    "mixed": "naïve café — Ünïcödé ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \t tabs and  double  spaces\n",
}

# Chat prompts whose answers are in the language named (to stream multibyte output).
REPLY_PROMPTS: dict[str, str] = {
    "Chinese": "请用中文写一句关于春天的诗。",
    "Japanese": "日本語で自己紹介を一文でしてください。",
    "Arabic": "اكتب جملة قصيرة عن القمر باللغة العربية.",
    "emoji": "Reply with only five emoji about the sea 🌊🐟.",
}
