"""MetaEmbed Studio product: ingest -> index -> search -> ui."""
