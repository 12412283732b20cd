"""Property-based fuzzing of the parsers and decoders the project owns."""
