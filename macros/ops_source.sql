{#
    Select the declared columns of an ops ledger (models/staging/ops/_ops__sources.yml).

    The ledgers are written by the Python jobs, so on a fresh warehouse they do not exist
    yet. Rather than fail the build, stand in an empty relation with the same columns and
    types, taken from the data_type declared on each column: the ops marts then build (and
    test) empty, and fill up as the jobs run.
#}

{% macro ops_source(table_name) %}
    {%- set relation = source('ops', table_name) -%}
    {%- if not execute -%}
        select * from {{ relation }}
    {%- else -%}
        {%- set node = graph.sources['source.' ~ project_name ~ '.ops.' ~ table_name] -%}
        {%- set columns = node.columns.values() | list -%}
        {%- if columns | length == 0 -%}
            {{ exceptions.raise_compiler_error("source ops." ~ table_name ~ " declares no columns: ops_source() needs each column's data_type") }}
        {%- endif -%}
        {%- if load_relation(relation) is none %}
        select
            {%- for column in columns %}
            cast(null as {{ column.data_type }}) as {{ column.name }}{{ "," if not loop.last }}
            {%- endfor %}
        where false
        {%- else %}
        select
            {%- for column in columns %}
            {{ column.name }}{{ "," if not loop.last }}
            {%- endfor %}
        from {{ relation }}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}
