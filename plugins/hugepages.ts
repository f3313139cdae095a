import { definePlugin } from "../lib/plugin.ts";
export default definePlugin({ name: "hugepages", summary: "wip", parse: () => ({}), undo() {} });
