// npm run build: the single binary, dist/vmhook (bun build --compile, with
// --minify --splitting --bytecode --format=esm: the hook's fast path loads no
// chunk it does not use).
//
// The binary starts with JavaScriptCore's tier-up thresholds scaled by
// JIT_POLICY (bun's compile.jitPolicy): a hook runs once and exits, so code
// compiled for speed is mostly compile time thrown away. 16 took 20 % off the
// CPU of a hugepages prepare (docs/bench.md); no vmhook process runs long
// enough to miss the JIT.
//
// One change to what the bundle holds: xmldom's entities.js sets up the whole
// HTML entity table (over 2000 names, frozen) when it loads, a third of
// xmldom's load time; vmhook parses only XML, which needs the five XML
// entities. The bundle gets a module with the same exports whose
// HTML_ENTITIES and entityMap load the real table at their first use.
// docs/bench.md has the measurement.
const ENTITIES = /@xmldom[\\/]xmldom[\\/]lib[\\/]entities\.js$/;
const FULL_TABLE = "xmldom-html-entities";

const JIT_POLICY = 16;

const outfile = process.argv[2] ?? "dist/vmhook";
const result = await Bun.build({
  entrypoints: ["hooks/qemu.ts"],
  // Read nothing from the working directory: the binary runs as root, also from
  // directories other users write (sudo vmhook … in a home or /tmp), where a
  // bunfig.toml's preload would be their code run as root and a .env their
  // settings (VMHOOK_ROOT, EDITOR).
  compile: { outfile, jitPolicy: JIT_POLICY, autoloadBunfig: false, autoloadDotenv: false, autoloadTsconfig: false, autoloadPackageJson: false },
  minify: true,
  splitting: true,
  bytecode: true,
  format: "esm",
  sourcemap: "none",
  plugins: [
    {
      name: "xmldom-entities-on-demand",
      setup(build) {
        build.onLoad({ filter: ENTITIES }, (args) => {
          // Taken from xmldom itself, so they stay what its version defines;
          // a version exporting more than these three fails the build here.
          const real = require(args.path) as { XML_ENTITIES: Record<string, string> };
          const exported = Object.keys(real).sort().join(", ");
          if (exported !== "HTML_ENTITIES, XML_ENTITIES, entityMap") throw new Error(`${args.path} exports ${exported}: packaging/build.ts knows only HTML_ENTITIES, XML_ENTITIES and entityMap`);
          const { XML_ENTITIES } = real;
          const fullTable = `${FULL_TABLE}:${args.path}`;
          return {
            loader: "js",
            contents: [
              `var freeze = require('./conventions').freeze;`,
              `exports.XML_ENTITIES = freeze(${JSON.stringify(XML_ENTITIES)});`,
              `var html;`,
              `function htmlEntities() { return html || (html = require(${JSON.stringify(fullTable)}).HTML_ENTITIES); }`,
              `Object.defineProperty(exports, 'HTML_ENTITIES', { enumerable: true, get: htmlEntities });`,
              `Object.defineProperty(exports, 'entityMap', { enumerable: true, get: htmlEntities });`,
            ].join("\n"),
          };
        });
        // Its own path (the bundler keeps one module per path), read from the real file.
        build.onResolve({ filter: new RegExp(`^${FULL_TABLE}:`) }, (args) => ({ path: `${args.path.slice(FULL_TABLE.length + 1)}#${FULL_TABLE}`, namespace: FULL_TABLE }));
        build.onLoad({ filter: /.*/, namespace: FULL_TABLE }, async (args) => {
          const file = args.path.slice(0, -FULL_TABLE.length - 1);
          return { loader: "js", contents: await Bun.file(file).text(), resolveDir: file.slice(0, file.lastIndexOf("/")) };
        });
      },
    },
  ],
});
if (!result.success) {
  for (const message of result.logs) console.error(message);
  process.exit(1);
}
