"""Data: dataset names to local files' rows (loading), tokenized cached splits (splits),
length buckets (buckets), padded batches and the resumable train order (batching), packed
rows (packing)."""
