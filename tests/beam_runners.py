"""The Beam runners every determinism test compares: the same input and config must give byte-identical output."""
RUNNERS = {
    "in_process": ["--direct_num_workers=1"],
    "multi_processing": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    "portable_loopback": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}
