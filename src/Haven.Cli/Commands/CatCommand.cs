using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Crypto;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Haven.Storage;

namespace Haven.Cli.Commands;

public static class CatCommand
{
    public static Command Build()
    {
        var kind = new Argument<string>("kind") { Description = "config, key, snapshot, index, lock, pack (header), tree or blob" };
        var id = new Argument<string?>("id") { Description = "Object id (snapshots accept a prefix or 'latest')", Arity = ArgumentArity.ZeroOrOne };
        var command = new Command("cat", "Print a repository object, decrypted (for debugging and inspection)") { kind, id };
        command.Description += """


            Examples:
              haven cat config
              haven cat snapshot latest
              haven cat tree 3fa1…   (64 hex digits)
              haven cat blob 9c0d… > chunk.bin
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            string k = ctx.Parse.GetValue(kind)!;
            string? reference = ctx.Parse.GetValue(id);
            if (k == "config")
            {
                var store = ctx.OpenStore();
                await using (store)
                {
                    var config = await Haven.Repository.Repository.ReadConfigAsync(store, ct);
                    Console.Out.WriteLine(JsonSerializer.Serialize(config, RepositoryJson.Default.RepositoryConfig));
                    return 0;
                }
            }

            if (reference is null)
            {
                throw new HavenException(ErrorCode.Usage, $"'haven cat {k}' needs an id");
            }

            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: k is "tree" or "blob", ct);
            ObjectId Full() => ObjectId.TryParse(reference, out var v) ? v : throw new HavenException(ErrorCode.Usage, $"'{reference}' is not a 64-digit object id");
            switch (k)
            {
                case "key":
                    var keyFile = KeyFile.Parse(await repo.Store.GetAsync(new StoreHandle(FileKind.Key, Full().ToString()), ct), reference);
                    Console.Out.WriteLine(JsonSerializer.Serialize(keyFile with { Data = [] }, RepositoryJson.Default.KeyFile));
                    break;
                case "snapshot":
                    var (sid, snapshot) = await repo.FindSnapshotAsync(reference, null, ct);
                    Console.Out.WriteLine(JsonSerializer.Serialize(snapshot, RepositoryJson.Default.Snapshot));
                    break;
                case "index":
                    var index = await repo.LoadIndexFileAsync(Full(), ct);
                    var packs = new JsonArray();
                    foreach (var p in index.Packs)
                    {
                        packs.Add(new JsonObject { ["id"] = p.Pack.ToString(), ["blobs"] = BlobsJson(p.Blobs) });
                    }

                    Console.Out.WriteLine(new JsonObject { ["supersedes"] = new JsonArray(index.Supersedes.Select(s => (JsonNode)JsonValue.Create(s.ToString())!).ToArray()), ["packs"] = packs }.ToJsonString());
                    break;
                case "lock":
                    Console.Out.WriteLine(System.Text.Encoding.UTF8.GetString(await repo.LoadSealedAsync(FileKind.Lock, Full(), ct)));
                    break;
                case "pack":
                    var handle = new StoreHandle(FileKind.Pack, Full().ToString());
                    var stat = await repo.Store.StatAsync(handle, ct) ?? throw new HavenException(ErrorCode.NotFound, $"{handle} does not exist");
                    var header = await PackFormat.ReadHeaderAsync(repo.Store, repo.Aead, handle.Name, stat.Size, ct);
                    Console.Out.WriteLine(new JsonObject { ["id"] = handle.Name, ["size"] = stat.Size, ["blobs"] = BlobsJson(header) }.ToJsonString());
                    break;
                case "tree":
                    var nodes = await repo.LoadTreeAsync(Full(), ct);
                    var array = new JsonArray();
                    foreach (var n in nodes)
                    {
                        array.Add(new JsonObject
                        {
                            ["name"] = n.DisplayName,
                            ["type"] = n.Type.ToString().ToLowerInvariant(),
                            ["mode"] = n.Mode,
                            ["uid"] = n.Uid,
                            ["gid"] = n.Gid,
                            ["size"] = n.Size,
                            ["mtime_ns"] = n.ModifyTimeNs,
                            ["inode"] = n.Inode,
                            ["links"] = n.Links,
                            ["subtree"] = n.Subtree?.ToString(),
                            ["content"] = n.Content is null ? null : new JsonArray(n.Content.Select(c => (JsonNode)JsonValue.Create(c.ToString())!).ToArray()),
                            ["link_target"] = n.LinkTarget is null ? null : PosixPath.ToDisplay(n.LinkTarget),
                            ["xattrs"] = n.Xattrs?.Count,
                        });
                    }

                    Console.Out.WriteLine(array.ToJsonString());
                    break;
                case "blob":
                    if (!repo.TryLocate(Full(), out _))
                    {
                        throw new HavenException(ErrorCode.NotFound, $"no index knows blob {reference}");
                    }

                    var data = await repo.ReadBlobAsync(Full(), ct);
                    using (var stdout = Console.OpenStandardOutput())
                    {
                        stdout.Write(data);
                    }

                    break;
                default:
                    throw new HavenException(ErrorCode.Usage, $"unknown kind '{k}': use config, key, snapshot, index, lock, pack, tree or blob");
            }

            return 0;
        });
        return command;
    }

    private static JsonArray BlobsJson(IEnumerable<PackedBlob> blobs) =>
        new(blobs.Select(b => (JsonNode)new JsonObject
        {
            ["id"] = b.Id.ToString(),
            ["type"] = b.Type.ToString().ToLowerInvariant(),
            ["offset"] = b.Offset,
            ["length"] = b.Length,
            ["raw_length"] = b.RawLength,
            ["compressed"] = b.Flags.HasFlag(BlobFlags.Zstd),
        }).ToArray());
}
