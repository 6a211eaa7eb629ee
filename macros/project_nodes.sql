{#
    Every node of this project that has a status: models, seeds, snapshots and data tests,
    plus every source table (its status is its freshness). Read from the graph at run time,
    so nodes deleted from the project drop out of the status mart, and nodes that never ran
    show up as not_run.
#}

{% macro project_nodes() %}
    {%- set rows = [] -%}
    {%- if execute -%}
        {%- for node in graph.nodes.values()
            if node.package_name == project_name
            and node.resource_type in ('model', 'seed', 'snapshot', 'test') -%}
            {%- do rows.append([node.unique_id, node.resource_type, node.name, node.original_file_path]) -%}
        {%- endfor -%}
        {%- for node in graph.sources.values() if node.package_name == project_name -%}
            {%- do rows.append([node.unique_id, 'source', node.source_name ~ '.' ~ node.name, node.original_file_path]) -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if rows | length == 0 %}
    select
        cast(null as varchar) as unique_id,
        cast(null as varchar) as resource_type,
        cast(null as varchar) as node_name,
        cast(null as varchar) as original_file_path
    where false
    {%- else %}
    select * from (
        values
        {%- for row in rows %}
        ({% for value in row %}'{{ value | replace("'", "''") }}'{{ ", " if not loop.last }}{% endfor %}){{ "," if not loop.last }}
        {%- endfor %}
    ) as project_nodes (unique_id, resource_type, node_name, original_file_path)
    {%- endif %}
{% endmacro %}
