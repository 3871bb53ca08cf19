"""rag-zh: offline Chinese semantic search and question answering over news archives."""
