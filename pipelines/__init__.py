"""vlmloom.pipelines."""
