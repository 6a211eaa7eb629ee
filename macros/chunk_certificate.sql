{#
    The embed quality gate's evidence: after every dbt run, the state of document_chunks it
    left behind (row count and a fingerprint of every row) with the status of every node the
    run executed. The embed job (python_jobs/index/gate.py) fingerprints the table it is about
    to read with the same query and indexes it only when the newest run that tested exactly
    that state found no error-level failure on document_chunks or its parents. A build that
    selected something else, or was killed between building the chunks and testing them,
    leaves a state no run has tested, and embed refuses it.

    The fingerprint query is declared twice, here (duckdb__) and in gate.py (FINGERPRINT_SQL); a test
    holds them equal. On another engine the certificate is still recorded, with a portable
    fingerprint (default__): the gate that reads it would need that engine's query too.
#}

{% macro chunk_fingerprint_sql(relation) %}
    {{- return(adapter.dispatch('chunk_fingerprint_sql')(relation)) -}}
{% endmacro %}

{% macro duckdb__chunk_fingerprint_sql(relation) %}
    {{- return(
        "select count(*) as row_count, "
        ~ "md5(coalesce(string_agg(md5(t::varchar), '' order by t.chunk_id), '')) as fingerprint "
        ~ "from " ~ relation ~ " as t"
    ) -}}
{% endmacro %}

{# Every column cast to text and joined (nulls as empty), hashed per row; the row hashes joined in chunk_id order, hashed. #}
{% macro default__chunk_fingerprint_sql(relation) %}
    {%- set fields = [] -%}
    {%- for column in adapter.get_columns_in_relation(relation) -%}
        {%- if not loop.first %}{% do fields.append("'|'") %}{% endif -%}
        {%- do fields.append("coalesce(cast(t." ~ adapter.quote(column.name) ~ " as " ~ dbt.type_string() ~ "), '')") -%}
    {%- endfor -%}
    {%- set row_hash = dbt.hash(dbt.concat(fields)) -%}
    {{- return(
        "select count(*) as row_count, "
        ~ dbt.hash("coalesce(" ~ dbt.listagg(row_hash, "''", "order by t.chunk_id") ~ ", '')") ~ " as fingerprint "
        ~ "from " ~ relation ~ " as t"
    ) -}}
{% endmacro %}


{% macro record_chunk_certificate(results, model_name='document_chunks') %}
    {% if execute %}
        {% set node = graph.nodes.values() | selectattr('resource_type', 'equalto', 'model')
            | selectattr('name', 'equalto', model_name) | first %}
        {% set relation = adapter.get_relation(database=node.database, schema=node.schema, identifier=node.alias) %}
        {% if relation is not none and results | length > 0 %}
            {% set statuses = [] %}
            {% for result in results %}
                {% do statuses.append({'unique_id': result.node.unique_id, 'status': result.status | string}) %}
            {% endfor %}
            {% do run_query("create schema if not exists audit") %}
            {% set text, whole, moment = dbt.type_string(), dbt.type_bigint(), dbt.type_timestamp() %}
            {% do run_query(
                "create table if not exists audit.chunk_certificates ("
                ~ " invocation_id " ~ text ~ ", command " ~ text ~ ", relation_name " ~ text ~ ", row_count " ~ whole
                ~ ", fingerprint " ~ text ~ ", results " ~ text ~ ", recorded_at " ~ moment ~ ")"
            ) %}
            {% do run_query(
                "insert into audit.chunk_certificates select '" ~ invocation_id ~ "', '"
                ~ flags.WHICH ~ "', '" ~ (relation | string | replace("'", "''")) ~ "', row_count, fingerprint, '"
                ~ (tojson(statuses) | replace("'", "''")) ~ "', " ~ dbt.current_timestamp()
                ~ " from (" ~ chunk_fingerprint_sql(relation) ~ ")"
            ) %}
        {% endif %}
    {% endif %}
    {{ return('') }}
{% endmacro %}
