"""Retrieval-augmented generation: chunking, embeddings, the vector store and retrieval."""
