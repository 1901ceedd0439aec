"""vlmloom.schemas."""
