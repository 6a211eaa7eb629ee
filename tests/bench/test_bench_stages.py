"""The 100 M-chunk projection of bench/bench_stages.py: arithmetic on measured figures (docs/scale.md)."""

from __future__ import annotations

import sys

import pytest

from python_jobs.common.settings import PROJECT_DIR

sys.path.insert(0, str(PROJECT_DIR / "bench"))
from bench_stages import PRICES, projection


def test_projection_shards_where_one_committer_or_one_plan_cannot_keep_up():
    figures = {
        "chunking": {"chunks_per_cpu_second": 1_000.0},
        "embedding": {"onnx-int8": {"texts_per_cpu_second": 20.0}},
        "committer": [
            {
                "chunks": 100_000,
                "committer_rows_per_second": 8_000.0,
                "plan_seconds": 1.0,
                "plan_step_peak_rss_mb": 300.0,
            },
            {
                "chunks": 1_000_000,
                "committer_rows_per_second": 5_000.0,
                "plan_seconds": 10.0,
                "plan_step_peak_rss_mb": 1_200.0,
                "index_bytes_per_chunk": 4_000,
            },
        ],
    }

    plan = projection(figures, 100e6, gpus=10, gpu_rate=2_000.0, vcpus=50)

    # 10 GPUs make 20,000 texts/s; the largest run's committer writes 5,000 rows/s, 2.5 GPUs' worth
    assert plan["gpus_one_committer_feeds"] == pytest.approx(2.5)
    assert plan["shards_for_committer"] == 4
    # 1 MB per 1,000 chunks over a 200 MB base: ~97.9 GB at 100 M, 32 GB per planner
    assert plan["plan_peak_gb_single"] == pytest.approx((200 + 100_000) / 1024)
    assert plan["shards_for_plan_memory"] == 4
    assert plan["shards"] == 4
    assert plan["plan_seconds_single"] == pytest.approx(1_000.0)
    assert plan["commit_hours_sharded"] == pytest.approx(100e6 / 20_000 / 3600)
    assert plan["wall_hours"]["embed_and_commit"] == pytest.approx(100e6 / 20_000 / 3600)
    assert plan["wall_hours"]["chunking"] == pytest.approx(100e6 / 1_000 / 3600 / 50)
    assert plan["cost_usd"]["embedding_gpu"] == pytest.approx(100e6 / 2_000 / 3600 * PRICES["gpu_hour"])
    assert plan["cost_usd"]["storage_per_month"] == pytest.approx(400 * PRICES["s3_gb_month"])
    assert plan["cost_usd"]["embedding_cpu_int8_instead"] == pytest.approx(100e6 / 20 / 3600 * PRICES["vcpu_hour"])


def test_one_committer_is_enough_when_it_outruns_the_gpus():
    figures = {"committer": [{"chunks": 1_000_000, "committer_rows_per_second": 50_000.0, "plan_seconds": 10.0}]}

    plan = projection(figures, 100e6, gpus=10, gpu_rate=2_000.0, vcpus=50)

    assert plan["shards"] == 1
    assert plan["wall_hours"]["embed_and_commit"] == pytest.approx(100e6 / 20_000 / 3600)  # the GPUs decide
