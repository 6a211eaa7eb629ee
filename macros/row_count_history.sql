{#
    Row counts of every table a run builds, kept across runs so the row_count_change
    test can compare a model with its previous build. Written by the on-run-end hook.
#}

{% macro create_row_count_history() %}
    {% if execute %}
        {% do run_query("create schema if not exists audit") %}
        {% set text, whole, moment = dbt.type_string(), dbt.type_bigint(), dbt.type_timestamp() %}
        {% do run_query(
            "create table if not exists audit.model_row_counts ("
            ~ " invocation_id " ~ text ~ ", model_name " ~ text ~ ", relation_name " ~ text
            ~ ", row_count " ~ whole ~ ", recorded_at " ~ moment ~ ")"
        ) %}
    {% endif %}
    {{ return('') }}
{% endmacro %}


{% macro record_row_counts(results) %}
    {% if execute %}
        {% for result in results
            if result.node.resource_type == 'model'
            and result.status == 'success'
            and result.node.config.materialized in ('table', 'incremental', 'external') %}
            {% do run_query(
                "insert into audit.model_row_counts select '" ~ invocation_id ~ "', '"
                ~ result.node.name ~ "', '" ~ result.node.relation_name | replace("'", "''") ~ "', count(*), "
                ~ dbt.current_timestamp() ~ " from " ~ result.node.relation_name
            ) %}
        {% endfor %}
    {% endif %}
    {{ return('') }}
{% endmacro %}
