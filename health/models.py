"""HealthCheck, Flip and GpuSample arrive with the health panel."""
