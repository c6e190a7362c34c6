//! A file's objects as one OSD lists them (`Osd.ListFile`), page after page.

use tonic::client::GrpcService;
use tonic::codegen::StdError;
use tonic::Status;

use crate::osd::osd_client::OsdClient;
use crate::osd::{FileObject, ListFileRequest};

/// Every live object of inode `ino` numbered `from` or more that the OSD behind `client` holds
/// a copy of, ascending; with when each copy last changed if `with_mtime`.
pub async fn list_file<T>(
    mut client: OsdClient<T>,
    ino: u64,
    from: u64,
    with_mtime: bool,
) -> Result<Vec<FileObject>, Status>
where
    T: GrpcService<tonic::body::BoxBody>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let req = ListFileRequest {
            ino,
            from: next,
            limit: 0,
            with_mtime,
        };
        let r = client.list_file(req).await?.into_inner();
        let last = r.objects.last().map(|o| o.objno);
        if r.objects.iter().any(|o| o.objno < next) {
            return Err(Status::internal(format!(
                "the listing of inode {ino} went back before object {next}"
            )));
        }
        out.extend(r.objects);
        match last {
            Some(l) if r.more && l < u64::MAX => next = l + 1,
            _ => return Ok(out),
        }
    }
}
