{#
    Select the declared columns of a file the retrieval service writes (models/staging/serve/_serve__sources.yml).

    The service appends its query log and feedback as Parquet files and keeps its keys in a JSON
    file; on a fresh clone, or before the first request, none of them exists, and DuckDB fails on a
    glob that matches nothing. So the source's `meta.files` (a glob, or one file) is checked when
    the model runs: with no match, stand in an empty relation with the declared columns, typed from
    each column's data_type, as ops_source() does for the ledgers. The glob names finished files
    only (`part-*.parquet`): a file the service is still writing has a `.tmp` name and never matches.
#}

{% macro serve_source(table_name) %}
    {%- set relation = source('serve', table_name) -%}
    {%- if not execute -%}
        select * from {{ relation }}
    {%- else -%}
        {%- set node = graph.sources['source.' ~ project_name ~ '.serve.' ~ table_name] -%}
        {%- set columns = node.columns.values() | list -%}
        {%- if columns | length == 0 or not node.meta.get('files') -%}
            {{ exceptions.raise_compiler_error("source serve." ~ table_name ~ " needs meta.files and a data_type on each column for serve_source()") }}
        {%- endif -%}
        {%- if serve_files_exist(node.meta['files']) %}
        select
            {%- for column in columns %}
            {{ column.name }}{{ "," if not loop.last }}
            {%- endfor %}
        from {{ relation }}
        {%- else %}
        select
            {%- for column in columns %}
            cast(null as {{ column.data_type }}) as {{ column.name }}{{ "," if not loop.last }}
            {%- endfor %}
        where false
        {%- endif -%}
    {%- endif -%}
{% endmacro %}


{# Whether a glob (relative to the project directory, where dbt runs) matches at least one file. #}
{% macro serve_files_exist(pattern) %}
    {{ return(adapter.dispatch('serve_files_exist')(pattern)) }}
{% endmacro %}

{% macro default__serve_files_exist(pattern) %}
    {{ exceptions.raise_compiler_error("serve_files_exist: reading the service's files needs an adapter that can list them (" ~ adapter.type() ~ " cannot)") }}
{% endmacro %}

{% macro duckdb__serve_files_exist(pattern) %}
    {%- set found = run_query("select count(*) from glob('" ~ (pattern | replace("'", "''")) ~ "')") -%}
    {{ return(found.columns[0].values()[0] > 0) }}
{% endmacro %}


{#
    A question as people type it, reduced to compare two askings: lowercase, trimmed, runs of
    whitespace as one space, so "Descale  the kettle?" and "descale the kettle?" are one question.
#}
{% macro normalize_question(column) -%}
    {{ return(adapter.dispatch('normalize_question')(column)) }}
{%- endmacro %}

{% macro default__normalize_question(column) -%}
    lower(trim({{ column }}))
{%- endmacro %}

{% macro duckdb__normalize_question(column) -%}
    lower(trim(regexp_replace({{ column }}, '\s+', ' ', 'g')))
{%- endmacro %}
