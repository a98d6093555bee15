"""The texts and (query, document) pairs every family's references are computed on.

Several scripts (Latin with accents, CJK, Hangul, Arabic, Cyrillic, Devanagari, emoji), inputs
long enough to be cut at the models' context, and near-empty ones.
"""

from __future__ import annotations

__all__ = ["LONG", "PAIRS", "QUERIES", "TEXTS"]

LONG = " ".join(
    [
        "Retrieval-augmented generation splits documents into chunks, embeds each chunk,",
        "stores the vectors in PostgreSQL with pgvector, and at query time embeds the",
        "question, finds the nearest chunks by cosine distance, reranks them with a",
        "cross-encoder and hands the best ones to a language model that writes the answer.",
    ]
    * 8
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I catch an exception in Python?",
    "A context manager's __exit__ runs even when the block raises.",
    "Café au lait, crème brûlée, naïve façade — déjà vu.",
    "Über die Brücke gehen wir später; Grüße aus München!",
    "¿Dónde está la estación de tren? Señor Muñoz lo sabe.",
    "Ångström, Øresund, Łódź, Dvořák and Şişli are proper nouns.",
    "机器学习是人工智能的一个分支。",
    "東京タワーは高さ333メートルです。",
    "日本語と中文と한국어が混ざった文章。",
    "서울은 대한민국의 수도입니다.",
    "안녕하세요, 만나서 반갑습니다!",
    "اللغة العربية تكتب من اليمين إلى اليسار.",
    "مرحبا بالعالم",
    "Москва — столица России.",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "Ελληνικά: γειά σου κόσμε.",
    "I love pizza 🍕 and tacos 🌮!",
    "🚀🚀🚀 launch day 🎉",
    "👩‍👩‍👧‍👦 family emoji with joiners",
    "Version 3.11.7 was released on 2023-12-04 at 10:30 UTC.",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "e = mc², ∑ xᵢ ≤ ∞, α β γ δ",
    "MiXeD CaSe And ALL CAPS TEXT",
    "tab\tseparated\tvalues\nand new lines",
    "   leading and trailing spaces   ",
    'hyphen-ated, apostrophe\'s, and "quoted" words',
    "www.example.com/path?query=1&x=y#frag",
    "user@example.org wrote: ok!!!",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "PostgreSQL stores vectors with the pgvector extension.",
    "Retrieval quality depends on the embedding model.",
    "The cat sat on the mat.",
    "Le chat est assis sur le tapis.",
    "猫がマットの上に座った。",
    "고양이가 매트 위에 앉았다.",
    LONG,
    LONG + " 长文本的结尾。",
    "a",
    ".",
    "🙂",
    "x y",
]

QUERIES = [
    "how to handle errors in python",
    "what is the capital of South Korea?",
    "机器学习",
    "café recipes",
    "عاصمة",
    "🍕",
]

PAIRS = [
    ("how to handle errors in python", "Use try and except to catch an exception."),
    ("how to handle errors in python", "The cat sat on the mat."),
    ("what is the capital of South Korea?", "서울은 대한민국의 수도입니다."),
    ("what is the capital of South Korea?", "Москва — столица России."),
    ("machine learning", "机器学习是人工智能的一个分支。"),
    ("machine learning", "東京タワーは高さ333メートルです。"),
    ("café", "Café au lait, crème brûlée, naïve façade — déjà vu."),
    ("café", "Über die Brücke gehen wir später."),
    ("Arabic writing direction", "اللغة العربية تكتب من اليمين إلى اليسار."),
    ("عاصمة", "مرحبا بالعالم"),
    ("pizza", "I love pizza 🍕 and tacos 🌮!"),
    ("🍕", "🚀🚀🚀 launch day 🎉"),
    ("vector database", "PostgreSQL stores vectors with the pgvector extension."),
    ("vector database", "Le chat est assis sur le tapis."),
    ("python version", "Version 3.11.7 was released on 2023-12-04 at 10:30 UTC."),
    ("sql query", "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;"),
    ("retrieval pipeline", LONG),
    ("retrieval pipeline", LONG + " 长文本的结尾。"),
    ("a", "a"),
    ("?", "."),
    ("猫", "猫がマットの上に座った。"),
    ("고양이", "고양이가 매트 위에 앉았다."),
    ("Greek", "Ελληνικά: γειά σου κόσμε."),
    ("family", "👩‍👩‍👧‍👦 family emoji with joiners"),
]
