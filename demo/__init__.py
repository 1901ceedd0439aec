"""vlmloom.demo: generated data for the demo, tests and benches (corpus, synthetic records, random tiny models).

No library folder (`schemas/ curation/ pipelines/ packing/ trainer/`) imports this package.
"""
