"""Split articles into overlapping, citable chunks that never cross an article."""

from __future__ import annotations

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.models import Article, Chunk

# Paragraph first, then sentence ends, then clause commas; NFKC has already turned
# full-width ！？；， into their ASCII forms, so both spellings are listed.
CHINESE_SEPARATORS = ["\n", "。", "！", "？", "!", "?", "；", ";", "，", ",", "、", ""]


def make_splitter(chunk_size: int, chunk_overlap: int) -> RecursiveCharacterTextSplitter:
    """A character-based splitter for Chinese text that keeps each separator at its sentence's end."""
    if chunk_size < 20 or not 0 <= chunk_overlap < chunk_size:
        raise ValueError(
            f"chunk_size {chunk_size} / chunk_overlap {chunk_overlap}: need size>=20, 0<=overlap<size"
        )
    return RecursiveCharacterTextSplitter(
        separators=CHINESE_SEPARATORS,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        keep_separator="end",
        add_start_index=True,
        strip_whitespace=True,
    )


def chunk_article(article: Article, splitter: RecursiveCharacterTextSplitter) -> list[Chunk]:
    """Chunks of one article; ``article.text[chunk.start:chunk.end] == chunk.text`` always holds."""
    chunks: list[Chunk] = []
    for doc in splitter.create_documents([article.text]):
        start = int(doc.metadata["start_index"])
        text = doc.page_content
        if start < 0 or article.text[start : start + len(text)] != text:
            start = article.text.find(text)  # the splitter's own search failed; ours cannot miss
        chunks.append(
            Chunk(
                article_id=article.id,
                source=article.source,
                title=article.title,
                text=text,
                start=start,
                end=start + len(text),
            )
        )
    return chunks


def chunk_articles(articles: list[Article], chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Chunks of every article, in corpus order."""
    splitter = make_splitter(chunk_size, chunk_overlap)
    return [chunk for article in articles for chunk in chunk_article(article, splitter)]
