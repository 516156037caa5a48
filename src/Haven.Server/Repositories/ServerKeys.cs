using System.Text.Json;
using Haven.Protocol;

namespace Haven.Server.Repositories;

/// <summary>
/// Keys to tenants' repositories that tenants chose to give the server (docs/key-model.md): per tenant, the id of a key
/// file in its repository and the secret that opens it, in <c>DATA/tenant-keys/TENANT.json</c> (mode 0600, in a
/// folder of mode 0700). Kept in the data folder, not in the management database, which may live on another machine.
/// </summary>
public sealed class ServerKeys
{
    private readonly string _folder;

    public ServerKeys(string dataDirectory)
    {
        _folder = Path.Combine(dataDirectory, "tenant-keys");
        Directory.CreateDirectory(_folder);
        File.SetUnixFileMode(_folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    public ServerKeyRequest? Get(string tenantId)
    {
        string path = PathOf(tenantId);
        return File.Exists(path) ? JsonSerializer.Deserialize<ServerKeyRequest>(File.ReadAllText(path), ProtocolJson.Options) : null;
    }

    public bool Has(string tenantId) => File.Exists(PathOf(tenantId));

    public void Set(string tenantId, ServerKeyRequest key)
    {
        string path = PathOf(tenantId);
        string temp = path + ".tmp";
        using (var file = new FileStream(temp, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
        {
            JsonSerializer.Serialize(file, key, ProtocolJson.Options);
            file.Flush(flushToDisk: true);
        }

        File.Move(temp, path, overwrite: true);
    }

    public void Remove(string tenantId) => File.Delete(PathOf(tenantId));

    private string PathOf(string tenantId) =>
        tenantId.All(char.IsAsciiHexDigitLower) && tenantId.Length is >= 16 and <= 64
            ? Path.Combine(_folder, tenantId + ".json")
            : throw new ArgumentException($"'{tenantId}' is not a tenant id", nameof(tenantId));
}
