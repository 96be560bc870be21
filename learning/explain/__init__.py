"""Stage 6's explanation machinery: attribution methods, the one renderer, the gallery pages."""
