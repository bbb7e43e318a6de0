"""Data hygiene: duplicates in and across seed and pool, and contamination by the eval benchmarks,
by question text (normalised, MinHash LSH) and by image (perceptual hashes, multi-index hashing)."""
