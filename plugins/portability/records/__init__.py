"""Records: the JSON Schemas, their validation, and how values are rendered in each format."""
