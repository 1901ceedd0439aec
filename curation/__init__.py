"""vlmloom.curation."""
