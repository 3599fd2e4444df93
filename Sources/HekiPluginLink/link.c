/* Product-only target: it exists to carry the link flags of libHekiPlugin.so
   (version script, static Swift runtime); see Package.swift. */
typedef int heki_plugin_link_target_has_no_code;
