"""vlmloom.trainer."""
