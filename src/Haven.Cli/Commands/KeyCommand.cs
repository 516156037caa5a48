using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Repository.Crypto;
using Haven.Storage;

namespace Haven.Cli.Commands;

public static class KeyCommand
{
    public static Command Build()
    {
        var newPasswordFile = new Option<string?>("--new-password-file") { Description = "Read the new password from this file instead of asking" };
        var list = new Command("list", "List the key slots (passwords) of the repository");
        var add = new Command("add", "Add a password that opens the repository") { newPasswordFile };
        var keyId = new Argument<string>("id") { Description = "Key id or unique prefix (see 'haven key list')" };
        var remove = new Command("remove", "Remove a key slot") { keyId };
        var passwd = new Command("passwd", "Change the password you opened the repository with") { newPasswordFile };
        var command = new Command("key", "Manage the repository's passwords (key slots)") { list, add, remove, passwd };
        command.Description += """


            Every key slot wraps the same master key; removing a slot does not re-encrypt data.

            Examples:
              haven key list
              haven key add --new-password-file /root/second-password
              haven key remove 3fa1c2d9
            """;

        Runner.SetHandler(list, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            var array = new JsonArray();
            ctx.Output.Line($" {"ID",-9} {"User",-12} {"Host",-20} {"Created",-19} KDF");
            await foreach (var f in repo.Store.ListAsync(FileKind.Key, ct))
            {
                var file = KeyFile.Parse(await repo.Store.GetAsync(f.Handle, ct), f.Handle.Name);
                bool current = f.Handle.Name == repo.KeyId.ToString();
                ctx.Output.Line($"{(current ? "*" : " ")}{f.Handle.Name[..8],-9} {file.Username,-12} {file.Hostname,-20} {file.Created.ToLocalTime():yyyy-MM-dd HH:mm:ss} {file.Kdf.Algorithm}");
                array.Add(new JsonObject { ["id"] = f.Handle.Name, ["current"] = current, ["username"] = file.Username, ["hostname"] = file.Hostname, ["created"] = file.Created, ["kdf"] = file.Kdf.Algorithm });
            }

            ctx.Output.JsonResult(array);
            return 0;
        });

        Runner.SetHandler(add, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            var password = NewPassword(ctx.Parse.GetValue(newPasswordFile));
            var id = await repo.AddKeyAsync(password, null, ct);
            ctx.Output.Line($"added key {id.Short}");
            ctx.Output.JsonResult(new JsonObject { ["id"] = id.ToString() });
            return 0;
        });

        Runner.SetHandler(remove, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            string prefix = ctx.Parse.GetValue(keyId)!.ToLowerInvariant();
            var keys = new List<string>();
            await foreach (var f in repo.Store.ListAsync(FileKind.Key, ct))
            {
                keys.Add(f.Handle.Name);
            }

            var matches = keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToList();
            if (matches.Count != 1)
            {
                throw new HavenException(matches.Count == 0 ? ErrorCode.NotFound : ErrorCode.Usage,
                    matches.Count == 0 ? $"no key with id {prefix}" : $"key id prefix {prefix} is ambiguous", "see 'haven key list'");
            }

            if (matches[0] == repo.KeyId.ToString())
            {
                throw new HavenException(ErrorCode.Usage, "refusing to remove the key you opened the repository with", "open it with another password, or use 'haven key passwd'");
            }

            await repo.Store.DeleteAsync(new StoreHandle(FileKind.Key, matches[0]), ct);
            ctx.Output.Line($"removed key {matches[0][..8]}");
            ctx.Output.JsonResult(new JsonObject { ["removed"] = matches[0] });
            return 0;
        });

        Runner.SetHandler(passwd, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            var password = NewPassword(ctx.Parse.GetValue(newPasswordFile));
            var id = await repo.AddKeyAsync(password, null, ct);
            await repo.Store.DeleteAsync(new StoreHandle(FileKind.Key, repo.KeyId.ToString()), ct);
            ctx.Output.Line($"password changed: key {repo.KeyId.Short} replaced by {id.Short}");
            ctx.Output.JsonResult(new JsonObject { ["id"] = id.ToString(), ["removed"] = repo.KeyId.ToString() });
            return 0;
        });

        return command;
    }

    private static string NewPassword(string? file)
    {
        var password = file is not null ? CliContext.ReadPasswordFile(file) : CliContext.Prompt("new password: ", confirm: true);
        if (password.Length == 0)
        {
            throw new HavenException(ErrorCode.Usage, "an empty password is not allowed");
        }

        return password;
    }
}
