"""What fewsam asks of glibc's allocator (set by the CLI's re-exec, by Ray workers and by studio jobs)."""

# Large blocks stay on the heap instead of being unmapped on free: SAM's large activations would
# otherwise go back to the kernel and fault in again on every pass. Measured on a few-shot decoder
# training step (batch 8, AMX host, idle): 0.87-0.89 s tuned, 1.76 s with glibc's defaults,
# 1.33 s with a 64 MiB mmap threshold.
ALLOCATOR_TUNING = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
