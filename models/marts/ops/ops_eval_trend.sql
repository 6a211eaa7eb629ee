-- Every overall eval metric per run and mode, against its gate and against the last good run.

{%- set regression_metrics = "'" ~ var('eval')['regression_metrics'] | join("', '") ~ "'" -%}
{%- set gates = [] -%}
{%- for gate in var('eval')['gates'] -%}
    {%- set parts = gate.split() -%}
    {%- do gates.append([parts[0], parts[1], parts[3]]) -%}
{%- endfor %}

with

eval_runs as (

    select * from {{ ref('stg_ops__eval_runs') }}

),

eval_metrics as (

    select * from {{ ref('stg_ops__eval_metrics') }}
    where category = 'all'

),

gates as (

    {%- if gates | length == 0 %}
    select
        cast(null as varchar) as mode,
        cast(null as varchar) as metric_key,
        cast(null as double) as gate_floor
    where false
    {%- else %}
        select * from (
            values
            {%- for mode, key, floor in gates %}
                ('{{ mode }}', '{{ key }}', cast({{ floor }} as double)){{ "," if not loop.last }}
            {%- endfor %}
        ) as gate_values (mode, metric_key, gate_floor)  -- noqa: AL05
    {%- endif %}

),

run_metrics as (

    select
        eval_metrics.eval_run_id,
        eval_runs.dataset,
        eval_runs.run_status,
        eval_runs.started_at,
        eval_metrics.mode,
        eval_metrics.metric_key,
        eval_metrics.metric,
        eval_metrics.k,
        eval_metrics.metric_value,
        eval_metrics.questions,
        -- a good run: gates passed, or a benchmark run that applies none
        eval_runs.run_status in ('passed', 'measured') as is_good_run
    from eval_metrics
    inner join eval_runs
        on eval_metrics.eval_run_id = eval_runs.eval_run_id

),

with_baseline as (

    select
        *,
        lag(metric_value) over by_time as previous_value,
        -- the last good run before this one: what a drop is measured against
        last_value(case when is_good_run then metric_value end ignore nulls) over (
            by_time rows between unbounded preceding and 1 preceding
        ) as baseline_value
    from run_metrics
    window by_time as (partition by dataset, mode, metric_key order by started_at, eval_run_id)

),

final as (

    select
        with_baseline.eval_run_id,
        with_baseline.dataset,
        with_baseline.run_status,
        with_baseline.started_at,
        with_baseline.mode,
        with_baseline.metric_key,
        with_baseline.metric,
        with_baseline.k,
        with_baseline.metric_value,
        with_baseline.questions,
        with_baseline.previous_value,
        with_baseline.metric_value - with_baseline.previous_value as change_from_previous,
        with_baseline.baseline_value,
        gates.gate_floor,
        coalesce(with_baseline.metric_value < gates.gate_floor, false) as is_below_gate,
        coalesce(
            with_baseline.metric_key in ({{ regression_metrics }})
            and with_baseline.baseline_value - with_baseline.metric_value > {{ var('eval')['regression_tolerance'] }},
            false
        ) as is_regression,
        row_number() over (
            partition by with_baseline.dataset, with_baseline.mode, with_baseline.metric_key
            order by with_baseline.started_at desc
        ) = 1 as is_latest
    from with_baseline
    left join gates
        on
            with_baseline.mode = gates.mode
            and with_baseline.metric_key = gates.metric_key

)

select * from final
