"""The archive: ZIP, BagIt bag, Frictionless data package, Parquet, its README; and its verification."""
