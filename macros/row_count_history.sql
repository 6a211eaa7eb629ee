{#
    Row counts of every table a run builds, kept across runs so the row_count_change
    test can compare a model with its previous build. Written by the on-run-end hook.
#}

{% macro create_row_count_history() %}
    {% if execute %}
        {% do run_query("create schema if not exists audit") %}
        {% do run_query(
            "create table if not exists audit.model_row_counts ("
            ~ " invocation_id varchar, model_name varchar, relation_name varchar,"
            ~ " row_count bigint, recorded_at timestamp)"
        ) %}
    {% endif %}
    {{ return('') }}
{% endmacro %}


{% macro record_row_counts(results) %}
    {% if execute %}
        {% for result in results
            if result.node.resource_type == 'model'
            and result.status == 'success'
            and result.node.config.materialized in ('table', 'incremental') %}
            {% do run_query(
                "insert into audit.model_row_counts select '" ~ invocation_id ~ "', '"
                ~ result.node.name ~ "', '" ~ result.node.relation_name | replace("'", "''") ~ "', count(*), "
                ~ dbt.current_timestamp() ~ " from " ~ result.node.relation_name
            ) %}
        {% endfor %}
    {% endif %}
    {{ return('') }}
{% endmacro %}
